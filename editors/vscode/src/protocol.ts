// The language server's names (copilot_ls/lsp/server.py): workspace/executeCommand commands.
// Kept in one table so that a rename on the server side is a one-line change here.

export const SERVER_COMMANDS = {
  accepted: "copilot-ls.accepted",
  partiallyAccepted: "copilot-ls.partiallyAccepted",
  rejected: "copilot-ls.rejected",
  status: "copilot-ls.status",
} as const;

export interface BackendStatus {
  state: "ok" | "down" | "unknown";
  detail?: string;
}

/**
 * Reads the answer of the server's status command into the status bar's terms. The server answers
 * `{backend: {url, model, state: "ok" | "failing", last_error, ...}, counters, stats, ...}`.
 */
export function parseStatus(answer: unknown): BackendStatus {
  const backend = field(answer, "backend");
  const url = text(field(backend, "url"));
  const model = text(field(backend, "model"));
  switch (text(field(backend, "state"))) {
    case "ok":
      return { state: "ok", detail: [url, model].filter(Boolean).join(", ") || undefined };
    case "failing":
      return { state: "down", detail: [url, text(field(backend, "last_error"))].filter(Boolean).join(": ") || undefined };
    default:
      return { state: "unknown", detail: url };
  }
}

function field(obj: unknown, key: string): unknown {
  return typeof obj === "object" && obj !== null ? (obj as Record<string, unknown>)[key] : undefined;
}

function text(v: unknown): string | undefined {
  return typeof v === "string" && v ? v : undefined;
}
