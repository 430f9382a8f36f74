// Pure: which process to start as the language server, and which Python can build the extension's own
// environment. `isExecutable` is injected for the unit tests.
import * as path from "path";

/** Where a server command came from, in the order they are tried. */
export type Source = "setting" | "workspace" | "python-extension" | "user" | "path" | "managed";

export interface ServerCommand {
  command: string;
  args: string[];
  source: Source;
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
  /** The interpreter selected in the Python extension (an executable, or an environment's folder), if any. */
  interpreter?: string;
  /** $PIPX_BIN_DIR and $PIPX_HOME, when set. */
  pipxBinDir?: string;
  pipxHome?: string;
  /** The environment the extension's Install button made (global storage), once it is complete. */
  managedVenv?: string;
}

function exeName(inp: Inputs): { exe: string; bin: string } {
  return inp.windows ? { exe: "copilot-ls.exe", bin: "Scripts" } : { exe: "copilot-ls", bin: "bin" };
}

/**
 * The places a `copilot-ls` executable is looked for when no setting names one, in order: the workspace's
 * virtualenv (.venv, venv), the Python extension's selected interpreter, ~/.local/bin and pipx, PATH, and last
 * the environment the extension installed itself.
 */
export function serverCandidates(inp: Inputs): { file: string; source: Source; how: string }[] {
  const { exe, bin } = exeName(inp);
  const sep = inp.windows ? ";" : ":";
  const out: { file: string; source: Source; how: string }[] = [];
  const add = (file: string, source: Source, how: string) => {
    if (!out.some((c) => c.file === file)) out.push({ file, source, how });
  };
  for (const w of inp.workspaceFolders) {
    for (const v of [".venv", "venv"]) add(path.join(w, v, bin, exe), "workspace", `found in the workspace virtualenv ${v}`);
  }
  if (inp.interpreter) {
    // An interpreter executable has its scripts beside it (venv) or in Scripts/ (a Windows base install); an
    // environment folder (conda) has them in bin/ or Scripts/.
    const how = `found beside the Python extension's interpreter ${inp.interpreter}`;
    const dir = path.dirname(inp.interpreter);
    add(path.join(dir, exe), "python-extension", how);
    if (inp.windows) add(path.join(dir, "Scripts", exe), "python-extension", how);
    add(path.join(inp.interpreter, bin, exe), "python-extension", how);
  }
  const localBin = path.join(inp.home, ".local", "bin");
  add(path.join(inp.pipxBinDir || localBin, exe), "user", `found in ${inp.pipxBinDir ? "$PIPX_BIN_DIR" : "~/.local/bin"}`);
  add(path.join(localBin, exe), "user", "found in ~/.local/bin");
  // pipx's own environment for the package (its app link may be missing from ~/.local/bin).
  const pipxHomes = inp.pipxHome
    ? [inp.pipxHome]
    : [path.join(inp.home, ".local", "share", "pipx"), path.join(inp.home, ".local", "pipx")];
  for (const h of pipxHomes) add(path.join(h, "venvs", "copilot-ls", bin, exe), "user", "found in pipx's copilot-ls environment");
  for (const d of inp.pathEnv.split(sep).filter(Boolean)) add(path.join(d, exe), "path", "found on PATH");
  if (inp.managedVenv) add(path.join(inp.managedVenv, bin, exe), "managed", "installed by the extension");
  return out;
}

/**
 * Settings first (an explicit command, then `python -m copilot_ls.cli`), then the first executable
 * `copilot-ls` of serverCandidates(). Returns null when nothing is found.
 */
export function resolveServerCommand(inp: Inputs, isExecutable: (p: string) => boolean): ServerCommand | null {
  const args = [...inp.serverArgs];
  if (inp.serverCommand) {
    return { command: inp.serverCommand, args, source: "setting", how: "from the copilot-ls.server.command setting" };
  }
  if (inp.pythonPath) {
    return {
      command: inp.pythonPath,
      args: ["-m", "copilot_ls.cli", ...args],
      source: "setting",
      how: "python -m copilot_ls.cli with the copilot-ls.server.pythonPath setting",
    };
  }
  for (const c of serverCandidates(inp)) {
    if (isExecutable(c.file)) return { command: c.file, args, source: c.source, how: c.how };
  }
  return null;
}

/**
 * Pythons that may build the extension's own environment (the first that is 3.11+ and has `venv` wins): the
 * Python extension's interpreter, then the usual names on PATH.
 */
export function pythonCandidates(inp: Pick<Inputs, "interpreter" | "pathEnv" | "windows">): string[] {
  const sep = inp.windows ? ";" : ":";
  const names = inp.windows ? ["python.exe", "py.exe"] : ["python3.13", "python3.12", "python3.11", "python3", "python"];
  const out: string[] = [];
  if (inp.interpreter && /python[\d.]*(\.exe)?$/i.test(path.basename(inp.interpreter))) out.push(inp.interpreter);
  for (const name of names) {
    for (const d of inp.pathEnv.split(sep).filter(Boolean)) {
      const p = path.join(d, name);
      if (!out.includes(p)) out.push(p);
    }
  }
  return out;
}

/** The interpreter and `copilot-ls` of a virtualenv folder. */
export function venvPaths(venv: string, windows: boolean): { python: string; server: string } {
  return windows
    ? { python: path.join(venv, "Scripts", "python.exe"), server: path.join(venv, "Scripts", "copilot-ls.exe") }
    : { python: path.join(venv, "bin", "python"), server: path.join(venv, "bin", "copilot-ls") };
}
