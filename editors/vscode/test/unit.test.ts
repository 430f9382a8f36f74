// Unit tests of the extension's pure modules (no VS Code needed): `npm test`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { insertedText, itemId, matchItem, Shown } from "../src/bookkeeping";
import { DEFAULT_BACKEND_URL, DEFAULTS, languageEnabled, readSettings, serverSettings } from "../src/config";
import { parseStatus } from "../src/protocol";
import { resolveServerCommand } from "../src/serverCommand";
import { INITIAL, logLevel, present, Status } from "../src/status";

const getter =
  (values: Record<string, unknown>) =>
  <T>(key: string, fallback: T): T =>
    (key in values ? values[key] : fallback) as T;

test("readSettings: defaults, then user values; bad types fall back", () => {
  assert.deepEqual(readSettings(getter({})), DEFAULTS);
  const s = readSettings(
    getter({ enable: false, backendUrl: " http://h:1 ", debounceMs: 250, maxLines: "x", languages: { go: 3 }, "server.args": ["-v", 4] }),
  );
  assert.equal(s.enable, false);
  assert.equal(s.backendUrl, "http://h:1");
  assert.equal(s.debounceMs, 250);
  assert.equal(s.maxLines, DEFAULTS.maxLines);
  assert.deepEqual(s.languages, DEFAULTS.languages);
  assert.deepEqual(s.serverArgs, ["-v"]);
});

test("languageEnabled: global switch, explicit language, then '*'", () => {
  const s = { ...DEFAULTS, languages: { "*": false, python: true } };
  assert.equal(languageEnabled(s, "python"), true);
  assert.equal(languageEnabled(s, "go"), false);
  assert.equal(languageEnabled({ ...s, enable: false }, "python"), false);
  assert.equal(languageEnabled({ ...DEFAULTS, languages: {} }, "go"), true);
  assert.equal(languageEnabled(DEFAULTS, "markdown"), false);
});

test("serverSettings: every key, always (the server merges), API key from the secret", () => {
  const cleared = serverSettings({ ...DEFAULTS, backendUrl: "" }, undefined);
  assert.deepEqual(cleared, {
    enabled: true,
    languages: DEFAULTS.languages,
    backendUrl: DEFAULT_BACKEND_URL,
    model: null,
    apiKey: null,
    debounceMs: 100,
    maxLines: 10,
    timeout: 30,
  });
  const set = serverSettings({ ...DEFAULTS, model: "m", debounceMs: 40.6, maxLines: 0 }, "sk-1");
  assert.equal(set.apiKey, "sk-1");
  assert.equal(set.model, "m");
  assert.equal(set.debounceMs, 41);
  assert.equal(set.maxLines, 1);
});

test("resolveServerCommand: setting, python, PATH, workspace venv, nothing", () => {
  const base = { serverCommand: "", pythonPath: "", serverArgs: ["--log-level", "INFO"], pathEnv: "/a:/b", workspaceFolders: ["/ws"], home: "/home/u", windows: false };
  const none = () => false;
  assert.deepEqual(resolveServerCommand({ ...base, serverCommand: "/x/copilot-ls" }, none)?.command, "/x/copilot-ls");
  const py = resolveServerCommand({ ...base, pythonPath: "/v/bin/python" }, none);
  assert.deepEqual([py?.command, py?.args], ["/v/bin/python", ["-m", "copilot_ls.cli", "--log-level", "INFO"]]);
  assert.equal(resolveServerCommand(base, (p) => p === "/b/copilot-ls")?.command, "/b/copilot-ls");
  assert.equal(resolveServerCommand(base, (p) => p === "/ws/.venv/bin/copilot-ls")?.how, "found in the workspace virtualenv");
  assert.equal(resolveServerCommand(base, none), null);
});

test("present: disabled > server down > loading > backend down > ready", () => {
  const running: Status = { ...INITIAL, progress: new Map(), server: "running", backend: "ok" };
  assert.equal(present(running).text, "$(check) copilot-ls: ready");
  assert.equal(present({ ...running, enabled: false }).state, "disabled");
  assert.match(present({ ...running, languageEnabled: false, languageId: "markdown" }).text, /disabled for markdown/);
  assert.equal(present({ ...running, server: "failed", serverError: "boom" }).state, "failed");
  assert.equal(present({ ...running, server: "starting" }).state, "starting");
  const loading = { ...running, progress: new Map([["t", { title: "starting the model backend", message: "loading weights", percentage: 41.6 }]]) };
  assert.equal(present(loading).text, "$(sync~spin) copilot-ls: loading model 42%");
  assert.equal(present(loading).tooltip, "starting the model backend: loading weights");
  const down = present({ ...running, backend: "down", backendDetail: "http://127.0.0.1:9: refused" });
  assert.equal(down.text, "$(warning) copilot-ls: backend down");
  assert.match(down.tooltip, /refused/);
  assert.equal(down.warning, true);
});

test("parseStatus reads the server's copilot-ls.status answer", () => {
  const ok = parseStatus({ backend: { url: "http://127.0.0.1:8765", model: null, state: "ok", last_error: null } });
  assert.deepEqual(ok, { state: "ok", detail: "http://127.0.0.1:8765" });
  const down = parseStatus({ backend: { url: "http://127.0.0.1:9", state: "failing", last_error: "cannot reach" } });
  assert.deepEqual(down, { state: "down", detail: "http://127.0.0.1:9: cannot reach" });
  assert.equal(parseStatus(null).state, "unknown");
  assert.equal(parseStatus({ backend: { state: "??" } }).state, "unknown");
});

test("insertedText: the one insertion between two texts", () => {
  assert.equal(insertedText("ab(|)", "ab(\"x\", |)"), "\"x\", ");
  assert.equal(insertedText("abc", "abc"), "");
  assert.equal(insertedText("", "new"), "new");
  assert.equal(insertedText("aaa", "aaaa"), "a");
});

test("item ids and partial matches", () => {
  assert.equal(itemId({ command: "copilot-ls.accepted", arguments: ["c7"] }, "copilot-ls.accepted"), "c7");
  assert.equal(itemId({ command: "other", arguments: ["c7"] }, "copilot-ls.accepted"), undefined);
  assert.equal(itemId(undefined, "copilot-ls.accepted"), undefined);
  const shown: Shown = { uri: "u", version: 1, line: 0, character: 0, texts: ['"a", "b")', 'x, y)'], ids: ["c1", "c2"], taken: [0, 0], at: 0 };
  assert.equal(matchItem(shown, "x,"), 1);
  assert.equal(matchItem(shown, '"a"'), 0);
  assert.equal(matchItem(shown, "zzz"), 0);
});

test("logLevel maps Python logging lines", () => {
  assert.equal(logLevel("2026-11-29 11:15:22,816 copilot_ls WARNING: no completions"), "warning");
  assert.equal(logLevel("2026-11-29 11:15:22,816 copilot_ls INFO: ready"), "info");
  assert.equal(logLevel("2026-11-29 11:15:22,816 copilot_ls ERROR: boom"), "error");
  assert.equal(logLevel("Traceback (most recent call last):"), "error");
  assert.equal(logLevel("plain text"), "info");
});
