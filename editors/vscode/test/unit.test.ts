// Unit tests of the extension's pure modules (no VS Code needed): `npm test`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { insertedText, itemId, matchItem, Shown } from "../src/bookkeeping";
import { DEFAULT_BACKEND_URL, DEFAULT_MIN_CONFIDENCE, DEFAULTS, languageEnabled, readSettings, serverSettings } from "../src/config";
import { parseStatus } from "../src/protocol";
import { messageActions } from "../src/messages";
import { pythonCandidates, resolveServerCommand, serverCandidates, venvPaths } from "../src/serverCommand";
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
  assert.equal(readSettings(getter({ "install.torchIndexUrl": " " })).torchIndexUrl, "");
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
    endpoint: "completions",
    debounceMs: 100,
    maxLines: 10,
    minConfidence: DEFAULT_MIN_CONFIDENCE,
    explicitCandidates: 4,
    guidedDecoding: "auto",
    timeout: 30,
  });
  const set = serverSettings({ ...DEFAULTS, model: "m", debounceMs: 40.6, maxLines: 0 }, "sk-1");
  assert.equal(set.apiKey, "sk-1");
  assert.equal(set.model, "m");
  assert.equal(set.debounceMs, 41);
  assert.equal(set.maxLines, 1);
  assert.equal(serverSettings({ ...DEFAULTS, minConfidence: 1.7 }, undefined).minConfidence, 1);
  assert.equal(serverSettings({ ...DEFAULTS, explicitCandidates: 40 }, undefined).explicitCandidates, 16);
});

test("resolveServerCommand: setting, python, PATH, workspace venv, nothing", () => {
  const base = { serverCommand: "", pythonPath: "", serverArgs: ["--log-level", "INFO"], pathEnv: "/a:/b", workspaceFolders: ["/ws"], home: "/home/u", windows: false };
  const none = () => false;
  assert.deepEqual(resolveServerCommand({ ...base, serverCommand: "/x/copilot-ls" }, none)?.command, "/x/copilot-ls");
  const py = resolveServerCommand({ ...base, pythonPath: "/v/bin/python" }, none);
  assert.deepEqual([py?.command, py?.args], ["/v/bin/python", ["-m", "copilot_ls.cli", "--log-level", "INFO"]]);
  assert.equal(resolveServerCommand(base, (p) => p === "/b/copilot-ls")?.command, "/b/copilot-ls");
  assert.equal(resolveServerCommand(base, (p) => p === "/ws/.venv/bin/copilot-ls")?.how, "found in the workspace virtualenv .venv");
  assert.equal(resolveServerCommand(base, none), null);
});

test("resolveServerCommand: the VS Code order (issue 16) -- setting, .venv, Python extension, ~/.local/bin and pipx, PATH, ours", () => {
  const inp = {
    serverCommand: "",
    pythonPath: "",
    serverArgs: [],
    pathEnv: "/usr/bin:/opt/bin",
    workspaceFolders: ["/ws"],
    home: "/home/u",
    windows: false,
    interpreter: "/envs/sel/bin/python3",
    managedVenv: "/storage/venv",
  };
  const everywhere = [
    "/ws/.venv/bin/copilot-ls",
    "/ws/venv/bin/copilot-ls",
    "/envs/sel/bin/copilot-ls",
    "/home/u/.local/bin/copilot-ls",
    "/home/u/.local/share/pipx/venvs/copilot-ls/bin/copilot-ls",
    "/home/u/.local/pipx/venvs/copilot-ls/bin/copilot-ls",
    "/usr/bin/copilot-ls",
    "/opt/bin/copilot-ls",
    "/storage/venv/bin/copilot-ls",
  ];
  // Take the winner away one at a time: the next place in the order wins.
  const sources: string[] = [];
  const commands: string[] = [];
  for (let i = 0; i < everywhere.length; i++) {
    const present = new Set(everywhere.slice(i));
    const found = resolveServerCommand(inp, (p) => present.has(p));
    sources.push(found?.source ?? "none");
    commands.push(found?.command ?? "none");
  }
  assert.deepEqual(commands, everywhere);
  assert.deepEqual(sources, ["workspace", "workspace", "python-extension", "user", "user", "user", "path", "path", "managed"]);
  // Both settings win over all of them.
  const all = () => true;
  assert.equal(resolveServerCommand({ ...inp, serverCommand: "/mine" }, all)?.source, "setting");
  assert.equal(resolveServerCommand({ ...inp, pythonPath: "/py" }, all)?.command, "/py");
  // No Python extension, no managed environment: those places are not looked at.
  const bare = serverCandidates({ ...inp, interpreter: undefined, managedVenv: undefined }).map((c) => c.source);
  assert.ok(!bare.includes("python-extension") && !bare.includes("managed"));
  // $PIPX_BIN_DIR and $PIPX_HOME replace pipx's defaults; a conda-style environment folder has bin/.
  const pipx = serverCandidates({ ...inp, pipxBinDir: "/pbin", pipxHome: "/phome" }).map((c) => c.file);
  assert.ok(pipx.includes("/pbin/copilot-ls") && pipx.includes("/phome/venvs/copilot-ls/bin/copilot-ls"));
  assert.ok(!pipx.includes("/home/u/.local/share/pipx/venvs/copilot-ls/bin/copilot-ls"));
  const conda = serverCandidates({ ...inp, interpreter: "/conda/envs/x" }).map((c) => c.file);
  assert.ok(conda.includes("/conda/envs/x/bin/copilot-ls"));
  // Windows: Scripts\copilot-ls.exe, ';' in PATH.
  const win = resolveServerCommand(
    { ...inp, windows: true, pathEnv: "C:\\py;C:\\tools", interpreter: undefined, managedVenv: undefined, workspaceFolders: [] },
    (p) => p.endsWith("tools/copilot-ls.exe") || p.endsWith("tools\\copilot-ls.exe"),
  );
  assert.equal(win?.source, "path");
});

test("pythonCandidates: the Python extension's interpreter first, then 3.13..3.11, python3, python on PATH", () => {
  const c = pythonCandidates({ interpreter: "/envs/sel/bin/python", pathEnv: "/usr/bin", windows: false });
  assert.deepEqual(c, ["/envs/sel/bin/python", "/usr/bin/python3.13", "/usr/bin/python3.12", "/usr/bin/python3.11", "/usr/bin/python3", "/usr/bin/python"]);
  assert.equal(pythonCandidates({ interpreter: "/conda/envs/x", pathEnv: "", windows: false }).length, 0);
  assert.deepEqual(venvPaths("/s/venv", false), { python: "/s/venv/bin/python", server: "/s/venv/bin/copilot-ls" });
});

test("messageActions: a toast that names a setting gets a button that opens it", () => {
  assert.deepEqual(messageActions("copilot-ls: ignored invalid settings: setting 'backend_url': expected an http(s) URL, got 'x'"), [
    { title: "Open Setting", setting: "copilot-ls.backendUrl" },
  ]);
  assert.deepEqual(messageActions("setting 'timeout': 0 is outside [0.1, 3600]"), [{ title: "Open Setting", setting: "copilot-ls.timeoutSeconds" }]);
  assert.deepEqual(messageActions("set copilot-ls.server.command to the executable."), [
    { title: "Open Setting", setting: "copilot-ls.server.command" },
  ]);
  const down = "copilot-ls: no completions: cannot reach the backend at http://127.0.0.1:9 (ConnectError: refused). Retrying in the background.";
  assert.deepEqual(messageActions(down), [{ title: "Open Setting", setting: "copilot-ls.backendUrl" }]);
  assert.deepEqual(messageActions("copilot-ls: backend at http://h:1 did not answer within 30 s"), [
    { title: "Open Setting", setting: "copilot-ls.backendUrl" },
  ]);
  assert.deepEqual(messageActions("no completions: backend at http://h refused the API key (HTTP 401): bad"), [
    { title: "Set API Key", command: "copilot-ls.setApiKey" },
  ]);
  assert.deepEqual(messageActions("copilot-ls ready"), []);
  assert.deepEqual(messageActions("setting 'fim_template': expected one of auto, none"), []); // no VS Code setting
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
