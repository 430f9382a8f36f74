// Pure: the state shown in the status bar, and how it is shown. The extension folds events into
// `Status` with plain object spreads and renders it with `present`.

export type ServerState = "starting" | "running" | "stopped" | "failed";
export type BackendState = "unknown" | "ok" | "down";

export interface Progress {
  title: string;
  message?: string;
  percentage?: number;
}

export interface Status {
  enabled: boolean; // the copilot-ls.enable setting
  languageId?: string; // of the active editor
  languageEnabled: boolean; // for the active editor's language
  server: ServerState;
  serverError?: string;
  progress: Map<string, Progress>; // $/progress by token, while running
  backend: BackendState;
  backendDetail?: string; // reason when down, URL / model when ok
}

export interface Presentation {
  text: string;
  tooltip: string;
  state: "disabled" | "starting" | "loading" | "failed" | "down" | "ready";
  warning: boolean;
}

export const INITIAL: Status = {
  enabled: true,
  languageEnabled: true,
  server: "starting",
  progress: new Map(),
  backend: "unknown",
};

const CLICK = "Click to toggle inline suggestions.";

export function present(s: Status): Presentation {
  if (!s.enabled) {
    return { state: "disabled", text: "$(circle-slash) copilot-ls: disabled", tooltip: `Inline suggestions are off. ${CLICK}`, warning: false };
  }
  if (!s.languageEnabled) {
    const lang = s.languageId ?? "this language";
    return {
      state: "disabled",
      text: `$(circle-slash) copilot-ls: disabled for ${lang}`,
      tooltip: `Inline suggestions are off for ${lang} (setting copilot-ls.languages). ${CLICK}`,
      warning: false,
    };
  }
  if (s.server === "failed" || s.server === "stopped") {
    return {
      state: "failed",
      text: "$(error) copilot-ls: server not running",
      tooltip: `${s.serverError ?? "The language server is not running."} See 'copilot-ls: Show Server Log'.`,
      warning: true,
    };
  }
  if (s.server === "starting") {
    return { state: "starting", text: "$(sync~spin) copilot-ls: starting", tooltip: "Starting the copilot-ls language server.", warning: false };
  }
  const progress = [...s.progress.values()].pop();
  if (progress) {
    const pct = progress.percentage !== undefined ? ` ${Math.round(progress.percentage)}%` : "";
    return {
      state: "loading",
      text: `$(sync~spin) copilot-ls: loading model${pct}`,
      tooltip: [progress.title, progress.message].filter(Boolean).join(": "),
      warning: false,
    };
  }
  if (s.backend === "down") {
    return {
      state: "down",
      text: "$(warning) copilot-ls: backend down",
      tooltip: `The completion backend does not answer${s.backendDetail ? `: ${s.backendDetail}` : ""}. ${CLICK}`,
      warning: true,
    };
  }
  return {
    state: "ready",
    text: "$(check) copilot-ls: ready",
    tooltip: `copilot-ls is ready${s.backendDetail ? ` (${s.backendDetail})` : ""}. ${CLICK}`,
    warning: false,
  };
}

/** The level of one stderr line of the server ("2026-01-01 12:00:00,000 copilot_ls WARNING: ..."). */
export function logLevel(line: string): "error" | "warning" | "info" | "debug" {
  const m = /\b(DEBUG|INFO|WARNING|ERROR|CRITICAL):/.exec(line);
  if (!m) return /^(Traceback|\s+File |\w+Error\b)/.test(line) ? "error" : "info";
  return m[1] === "CRITICAL" || m[1] === "ERROR" ? "error" : m[1] === "WARNING" ? "warning" : m[1] === "DEBUG" ? "debug" : "info";
}
