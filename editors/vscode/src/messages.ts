// Pure: which VS Code setting a message of the language server is about, so that its toast can offer a button
// that opens that setting.
import { SECTION } from "./config";

// The server's names (copilot_ls/settings.py, snake_case or as sent) -> this extension's setting ids.
const SERVER_TO_SETTING: Record<string, string> = {
  backend_url: "backendUrl",
  backendurl: "backendUrl",
  model: "model",
  timeout: "timeoutSeconds",
  debounce_ms: "debounceMs",
  debouncems: "debounceMs",
  max_lines: "maxLines",
  maxlines: "maxLines",
  min_confidence: "minConfidence",
  minconfidence: "minConfidence",
  explicit_n: "explicitCandidates",
  explicitcandidates: "explicitCandidates",
  guided_decoding: "guidedDecoding",
  guideddecoding: "guidedDecoding",
  languages: "languages",
  enabled: "enable",
  enable: "enable",
};

export interface MessageAction {
  title: string; // the button
  setting?: string; // full setting id to open
  command?: string; // or a command to run
}

/**
 * The buttons for one server message: the setting it names (`setting 'backend_url': ...`, or a literal
 * `copilot-ls.x`), the backend URL for a backend that cannot be reached or does not answer, the API key command
 * for a refused key.
 */
export function messageActions(message: string): MessageAction[] {
  const actions: MessageAction[] = [];
  // One setting button (the first setting named) and one command button at most: a toast stays short.
  const add = (a: MessageAction) => {
    if (!actions.some((b) => (a.setting && b.setting) || (a.command && b.command))) actions.push(a);
  };
  const literal = new RegExp(`\\b${SECTION.replace(/[-.]/g, "\\$&")}\\.([A-Za-z][\\w.]*[A-Za-z])`, "g");
  for (const m of message.matchAll(literal)) add({ title: "Open Setting", setting: `${SECTION}.${m[1]}` });
  for (const m of message.matchAll(/\bsetting '([A-Za-z_]+)'/g)) {
    const id = SERVER_TO_SETTING[m[1].toLowerCase()];
    if (id) add({ title: "Open Setting", setting: `${SECTION}.${id}` });
  }
  if (/API key/i.test(message)) add({ title: "Set API Key", command: `${SECTION}.setApiKey` });
  else if (/cannot reach the backend|backend at \S+ (did not answer|is not ready|answered)/i.test(message)) {
    add({ title: "Open Setting", setting: `${SECTION}.backendUrl` });
  }
  return actions;
}
