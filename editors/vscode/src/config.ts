// Pure: the extension's settings, and what the language server is told about them.
// No `vscode` import here so that the unit tests run under plain node.

export const SECTION = "copilot-ls";
export const API_KEY_SECRET = "copilot-ls.apiKey";
// The server's default (copilot_ls/lsp/settings.py); there it starts a local `copilot-backend` when none answers.
export const DEFAULT_BACKEND_URL = "http://127.0.0.1:8765";
// The server's DEFAULT_MIN_CONFIDENCE (copilot_ls/lsp/settings.py; chosen in docs/quality.md).
export const DEFAULT_MIN_CONFIDENCE = 0;
// The server's guided-decoding field styles (copilot_ls/backend.py GUIDED_STYLES).
export const GUIDED_STYLES = ["auto", "off", "allowed_identifiers", "regex", "grammar"];

export interface ExtensionSettings {
  enable: boolean;
  languages: Record<string, boolean>; // language id -> enabled; "*" is the default
  backendUrl: string; // "" = DEFAULT_BACKEND_URL
  model: string; // "" = whatever the backend serves
  endpoint: string; // "completions" | "chat" (chat-only servers) | "auto" (the server probes once)
  debounceMs: number;
  maxLines: number;
  minConfidence: number; // hide suggestions whose confidence is below this (0..1; 0 = show all)
  explicitCandidates: number; // candidates, ranked, when the user asks (Alt+\\, cycling)
  guidedDecoding: string; // "auto" | "off" | "allowed_identifiers" | "regex" (vLLM) | "grammar" (llama.cpp)
  timeoutSeconds: number; // one backend request
  serverCommand: string;
  pythonPath: string;
  serverArgs: string[];
  torchIndexUrl: string; // extra package index for the PyTorch step of Install (Linux); "" = none
}

// PyTorch's CPU builds; on Linux PyPI's torch is the CUDA build (gigabytes of libraries a CPU engine never uses).
export const DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu";

export const DEFAULTS: ExtensionSettings = {
  enable: true,
  languages: { "*": true, plaintext: false, markdown: false, scminput: false },
  backendUrl: DEFAULT_BACKEND_URL,
  model: "",
  endpoint: "completions",
  debounceMs: 100,
  maxLines: 10,
  minConfidence: DEFAULT_MIN_CONFIDENCE,
  explicitCandidates: 4,
  guidedDecoding: "auto",
  timeoutSeconds: 30,
  serverCommand: "",
  pythonPath: "",
  serverArgs: [],
  torchIndexUrl: DEFAULT_TORCH_INDEX_URL,
};

// Settings whose change needs a new server process (everything else goes through didChangeConfiguration).
export const RESTART_KEYS = ["server.command", "server.pythonPath", "server.args"];

/** Reads settings through `get(key, default)` (vscode's WorkspaceConfiguration.get has that shape). */
export function readSettings(get: <T>(key: string, fallback: T) => T): ExtensionSettings {
  const num = (key: "debounceMs" | "maxLines" | "minConfidence" | "explicitCandidates" | "timeoutSeconds"): number => {
    const v = get<unknown>(key, DEFAULTS[key]);
    return typeof v === "number" && Number.isFinite(v) ? v : DEFAULTS[key];
  };
  const str = (key: string): string => {
    const v = get<unknown>(key, "");
    return typeof v === "string" ? v.trim() : "";
  };
  const langs = get<unknown>("languages", DEFAULTS.languages);
  const args = get<unknown>("server.args", []);
  return {
    enable: get<unknown>("enable", true) !== false,
    languages: isBoolRecord(langs) ? langs : { ...DEFAULTS.languages },
    backendUrl: str("backendUrl") || DEFAULT_BACKEND_URL,
    model: str("model"),
    endpoint: ["completions", "chat", "auto"].includes(str("endpoint")) ? str("endpoint") : DEFAULTS.endpoint,
    debounceMs: num("debounceMs"),
    maxLines: num("maxLines"),
    minConfidence: num("minConfidence"),
    explicitCandidates: num("explicitCandidates"),
    guidedDecoding: GUIDED_STYLES.includes(str("guidedDecoding")) ? str("guidedDecoding") : DEFAULTS.guidedDecoding,
    timeoutSeconds: num("timeoutSeconds"),
    serverCommand: str("server.command"),
    pythonPath: str("server.pythonPath"),
    serverArgs: Array.isArray(args) ? args.filter((a): a is string => typeof a === "string") : [],
    torchIndexUrl: (() => {
      const v = get<unknown>("install.torchIndexUrl", DEFAULT_TORCH_INDEX_URL);
      return typeof v === "string" ? v.trim() : DEFAULT_TORCH_INDEX_URL;
    })(),
  };
}

function isBoolRecord(v: unknown): v is Record<string, boolean> {
  return typeof v === "object" && v !== null && Object.values(v).every((x) => typeof x === "boolean");
}

/** Is completion on for this language? An explicit entry wins over "*"; "*" defaults to true. */
export function languageEnabled(settings: ExtensionSettings, languageId: string): boolean {
  if (!settings.enable) return false;
  const own = settings.languages[languageId];
  if (typeof own === "boolean") return own;
  const star = settings.languages["*"];
  return typeof star === "boolean" ? star : true;
}

/**
 * The settings object the language server reads (initializationOptions and
 * workspace/didChangeConfiguration), with the names of copilot_ls/lsp/settings.py. The server merges what it gets
 * into what it has, so every key is always sent: a setting cleared here is reset there.
 */
export function serverSettings(settings: ExtensionSettings, apiKey: string | undefined): Record<string, unknown> {
  return {
    enabled: settings.enable,
    languages: { ...settings.languages },
    backendUrl: settings.backendUrl || DEFAULT_BACKEND_URL,
    model: settings.model || null,
    apiKey: apiKey || null,
    endpoint: settings.endpoint || DEFAULTS.endpoint,
    debounceMs: Math.max(0, Math.round(settings.debounceMs)),
    maxLines: Math.max(1, Math.round(settings.maxLines)),
    minConfidence: Math.min(1, Math.max(0, settings.minConfidence)),
    explicitCandidates: Math.min(16, Math.max(1, Math.round(settings.explicitCandidates))),
    guidedDecoding: settings.guidedDecoding || DEFAULTS.guidedDecoding,
    timeout: Math.min(3600, Math.max(0.1, settings.timeoutSeconds)),
  };
}
