// Pure: which process to start as the language server. `isExecutable` is injected for the unit tests.
import * as path from "path";

export interface ServerCommand {
  command: string;
  args: string[];
  how: string; // a sentence for the log: where the command came from
}

export interface Inputs {
  serverCommand: string; // the copilot-ls.server.command setting ("" = unset)
  pythonPath: string; // the copilot-ls.server.pythonPath setting ("" = unset)
  serverArgs: string[];
  pathEnv: string; // $PATH of the extension host
  workspaceFolders: string[]; // file-system paths
  home: string;
  windows: boolean;
}

/**
 * Settings first (an explicit command, then `python -m copilot_ls.cli`), then an installed `copilot-ls`:
 * on PATH, in a workspace virtualenv (.venv / venv), in ~/.local/bin. Returns null when nothing is found.
 */
export function resolveServerCommand(inp: Inputs, isExecutable: (p: string) => boolean): ServerCommand | null {
  const args = [...inp.serverArgs];
  if (inp.serverCommand) {
    return { command: inp.serverCommand, args, how: "from the copilot-ls.server.command setting" };
  }
  if (inp.pythonPath) {
    return {
      command: inp.pythonPath,
      args: ["-m", "copilot_ls.cli", ...args],
      how: "python -m copilot_ls.cli with the copilot-ls.server.pythonPath setting",
    };
  }
  const exe = inp.windows ? "copilot-ls.exe" : "copilot-ls";
  const bin = inp.windows ? "Scripts" : "bin";
  const sep = inp.windows ? ";" : ":";
  const candidates: [string, string][] = [
    ...inp.pathEnv.split(sep).filter(Boolean).map((d): [string, string] => [path.join(d, exe), "found on PATH"]),
    ...inp.workspaceFolders.flatMap((w) =>
      [".venv", "venv"].map((v): [string, string] => [path.join(w, v, bin, exe), "found in the workspace virtualenv"]),
    ),
    [path.join(inp.home, ".local", "bin", exe), "found in ~/.local/bin"],
  ];
  for (const [candidate, how] of candidates) {
    if (isExecutable(candidate)) return { command: candidate, args, how };
  }
  return null;
}
