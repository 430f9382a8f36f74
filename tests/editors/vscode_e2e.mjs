// Drives a real VS Code (code-server 4.100.3 in Debian's Chromium, through playwright-core) with the copilot-ls
// extension installed from its .vsix. Started by tests/editors/test_vscode_e2e.py, which owns the backend and
// makes the assertions; this script only acts and records what it saw in OUT/report.json (+ screenshots).
//
//   node tests/editors/vscode_e2e.mjs CONFIG.json
//
// CONFIG: { tools, vsix, workspace, out, chromium, settings: {...user settings...}, timeoutMs (ghost text wait),
//           deadBackendUrl, typedWhileDown, apiKey, env: {NAME: value | null} for code-server,
//           scenario: "install" (no server anywhere: Install, then ghost text) | "choose" (Choose... chooseFile)
//           | absent (everything else) }
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { createRequire } from "node:module";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(cfg.tools, "package.json"));
const { chromium } = require("playwright-core");

const OUT = cfg.out;
const UD = path.join(OUT, "user-data");
const EXT = path.join(OUT, "extensions");
const SETTINGS = path.join(UD, "User", "settings.json");
const CODE_SERVER = path.join(cfg.tools, "node_modules", "code-server", "out", "node", "entry.js");
const TYPED_DEF = "def test_common_prefix():";
const TYPED_ASSERT = "    assert common_prefix(";
const STATUS = ".statusbar-item:has-text('copilot-ls:')";
const started = Date.now();
const report = { steps: [], screenshots: [] };

const env = {
  ...process.env,
  XDG_CONFIG_HOME: path.join(OUT, "xdg-config"),
  XDG_DATA_HOME: path.join(OUT, "xdg-data"),
  XDG_CACHE_HOME: path.join(OUT, "xdg-cache"),
};
// cfg.env: variables code-server (and so the extension host) gets instead; null removes one.
for (const [k, v] of Object.entries(cfg.env ?? {})) {
  if (v === null) delete env[k];
  else env[k] = v;
}

function step(what) {
  const line = `[vscode-e2e +${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`;
  report.steps.push(line);
  console.error(line);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function until(what, fn, timeoutMs, everyMs = 250) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function writeSettings(settings) {
  fs.mkdirSync(path.dirname(SETTINGS), { recursive: true });
  fs.writeFileSync(SETTINGS, JSON.stringify(settings, null, 2));
}

function findLogs(dir, suffix, found = []) {
  if (!fs.existsSync(dir)) return found;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) findLogs(p, suffix, found);
    else if (e.name.endsWith(suffix)) found.push(p);
  }
  return found;
}

async function shot(page, name) {
  if (!page) return;
  const file = path.join(OUT, `${name}.png`);
  try {
    await page.screenshot({ path: file });
    report.screenshots.push(file);
  } catch (err) {
    step(`screenshot ${name} failed: ${err.message}`);
  }
}

async function statusText(page) {
  const item = page.locator(STATUS).first();
  return (await item.count()) ? (await item.innerText()).replace(/\s+/g, " ").trim() : "";
}

async function waitStatus(page, word, timeoutMs, nudge) {
  let last = "";
  try {
    return await until(
      `status bar "${word}"`,
      async () => {
        last = await statusText(page);
        if (last.includes(word)) return last;
        if (nudge) await nudge();
        return null;
      },
      timeoutMs,
      1000,
    );
  } catch (err) {
    throw new Error(`${err.message} (status bar shows "${last}")`);
  }
}

// The ghost text VS Code shows: token spans on the cursor line, plus a view zone for further lines.
async function ghostText(page) {
  return page.evaluate(() => {
    const editor = document.querySelector(".editor-instance .monaco-editor") ?? document;
    const inline = [...editor.querySelectorAll(".view-lines .ghost-text-decoration")].map((el) => el.textContent ?? "").join("");
    const lines = [...editor.querySelectorAll(".view-zones .ghost-text .view-line")].map((el) => el.textContent ?? "");
    return [inline, ...lines].join("\n").replace(/\u00a0/g, " ");
  });
}

// Waits for ghost text. Suggestions come by themselves after typing. Alt+\\ asks explicitly: right away when
// `firstTriggerMs` is 0, when the status bar says the backend is down, and after every `everyMs` without any
// (rarely: a new request supersedes the running one, which on a busy CPU may be close to done).
async function waitGhost(page, timeoutMs, firstTriggerMs = 120000, everyMs = 120000) {
  const since = Date.now();
  let next = firstTriggerMs;
  let lastDownTrigger = 0;
  const trigger = async () => {
    report.explicitTriggers = (report.explicitTriggers ?? 0) + 1;
    await page.keyboard.press("Alt+Backslash");
  };
  return until(
    "ghost text",
    async () => {
      const text = await ghostText(page);
      if (text.trim()) return text;
      if (Date.now() - since >= next) {
        next += everyMs;
        await trigger();
      } else if ((await statusText(page)).includes("backend down") && Date.now() - lastDownTrigger > 5000) {
        lastDownTrigger = Date.now();
        await trigger();
      }
      return null;
    },
    timeoutMs,
    500,
  );
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const testFile = path.join(cfg.workspace, "test_lib.py");
  const original = fs.readFileSync(testFile, "utf8");

  step(`installing ${cfg.vsix}`);
  execFileSync(process.execPath, [CODE_SERVER, "--user-data-dir", UD, "--extensions-dir", EXT, "--install-extension", cfg.vsix], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  writeSettings(cfg.settings);

  const port = await freePort();
  step(`starting code-server on 127.0.0.1:${port}`);
  const serverLog = fs.openSync(path.join(OUT, "code-server.log"), "w");
  const server = spawn(
    process.execPath,
    [
      CODE_SERVER,
      "--auth", "none",
      "--bind-addr", `127.0.0.1:${port}`,
      "--disable-telemetry",
      "--disable-update-check",
      "--disable-workspace-trust",
      "--disable-getting-started-override",
      "--user-data-dir", UD,
      "--extensions-dir", EXT,
      cfg.workspace,
    ],
    { env, stdio: ["ignore", serverLog, serverLog], detached: true },
  );
  fs.writeFileSync(path.join(OUT, "code-server.pid"), String(server.pid)); // its process group, for the test's cleanup
  let browser;
  let page;
  try {
    await until("code-server /healthz", async () => {
      try {
        return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
      } catch {
        return false;
      }
    }, 60000);

    browser = await chromium.launch({
      executablePath: cfg.chromium ?? "/usr/bin/chromium",
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
    page = await browser.newPage({ viewport: { width: 1024, height: 600 } });
    page.on("pageerror", (err) => step(`page error: ${err.message}`));
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(cfg.workspace)}`);
    await page.waitForSelector(".monaco-workbench", { timeout: 120000 });
    step("workbench visible");
    report.statusAtStart = await waitStatus(page, "copilot-ls:", 120000);
    step(`extension active: "${report.statusAtStart}"`);

    if (cfg.scenario === "choose") {
      // No copilot-ls anywhere: Choose... opens the file picker (code-server's own dialog: a path box); the
      // chosen file goes to copilot-ls.server.command and the server starts.
      const toast = page.locator(".notification-toast", { hasText: "was not found" }).first();
      await toast.waitFor({ timeout: 60000 });
      report.notFoundButtons = await toast.locator(".monaco-button").allInnerTexts();
      await toast.locator(".monaco-button", { hasText: "Choose..." }).first().click();
      const box = page.locator(".quick-input-widget input").first();
      await box.waitFor({ timeout: 20000 });
      // The dialog ignores Enter while it is still listing the typed folder (busy), which a loaded machine makes
      // likely: type the path, then press Enter until the dialog closes.
      await box.fill(cfg.chooseFile);
      const widget = page.locator(".quick-input-widget").first();
      report.chooseEnters = await until(
        "the file picker to accept the path",
        async () => {
          if (!(await widget.isVisible())) return (report.chooseEnters ?? 0) || 1;
          if ((await box.inputValue()) !== cfg.chooseFile) await box.fill(cfg.chooseFile);
          await new Promise((r) => setTimeout(r, 1000));
          await box.press("Enter");
          report.chooseEnters = (report.chooseEnters ?? 0) + 1;
          return null;
        },
        60000,
        2000,
      );
      step(`file picker closed after ${report.chooseEnters} Enter(s)`);
      report.statusAfterChoose = await waitStatus(page, "ready", 120000);
      // User settings; in code-server (a remote) a machine-scoped setting goes to Machine/settings.json.
      report.settingsFiles = Object.fromEntries(
        ["User", "Machine"].map((d) => path.join(UD, d, "settings.json")).filter((f) => fs.existsSync(f)).map((f) => [f, fs.readFileSync(f, "utf8")]),
      );
      step(`chose ${cfg.chooseFile}; status "${report.statusAfterChoose}"`);
      report.ok = true;
      step("done");
      return 0;
    }

    if (cfg.scenario === "install") {
      // No copilot-ls anywhere: the toast offers Install and Choose...; Install builds the extension's own
      // environment from the wheel in the .vsix and starts the server.
      const toast = page.locator(".notification-toast", { hasText: "was not found" }).first();
      await toast.waitFor({ timeout: 60000 });
      report.notFoundText = (await toast.innerText()).replace(/\s+/g, " ");
      report.notFoundButtons = await toast.locator(".monaco-button").allInnerTexts();
      report.statusNotFound = await statusText(page);
      step(`not found: ${JSON.stringify(report.notFoundText)} buttons ${JSON.stringify(report.notFoundButtons)}`);
      await shot(page, "not-found");
      await toast.locator(".monaco-button", { hasText: "Install" }).first().click();
      report.installProgress = [];
      report.statusAfterInstall = await until(
        "the installed server to be ready",
        async () => {
          const texts = await page.locator(".notification-toast", { hasText: "installing" }).allInnerTexts().catch(() => []);
          for (const t of texts) {
            const line = t.replace(/\s+/g, " ").trim();
            if (line && report.installProgress.at(-1) !== line) report.installProgress.push(line);
          }
          const failed = await page.locator(".notification-toast", { hasText: "installing copilot-ls failed" }).count();
          if (failed) throw new Error(`install failed: ${await page.locator(".notification-toast", { hasText: "failed" }).first().innerText()}`);
          const status = await statusText(page);
          return status.includes("ready") ? status : null;
        },
        cfg.installTimeoutMs ?? 1200000,
        1000,
      );
      step(`installed; status "${report.statusAfterInstall}"; ${report.installProgress.length} progress messages`);
    }

    // Open test_lib.py from the explorer and put the cursor at its end.
    const row = page.locator(".explorer-folders-view .monaco-list-row", { hasText: "test_lib.py" }).first();
    await row.waitFor({ timeout: 30000 });
    await row.click();
    const editor = page.locator(".editor-instance .monaco-editor .view-lines").first();
    await page.locator(".editor-instance .monaco-editor .view-lines", { hasText: "from lib import" }).first().waitFor({ timeout: 30000 });
    await editor.click();
    await page.keyboard.press("Control+End");

    // 1. Type the test's first lines; the server + model answer with ghost text.
    step("typing the test");
    await page.keyboard.type(TYPED_DEF, { delay: 25 });
    await page.keyboard.press("Enter");
    await page.keyboard.type(TYPED_ASSERT, { delay: 25 });
    report.ghostFirst = await waitGhost(page, cfg.timeoutMs ?? 180000);
    report.ghostHtml = await page.evaluate(() =>
      [...document.querySelectorAll(".monaco-editor [class*=ghost]")].map((el) => el.outerHTML).join("\n").slice(0, 6000),
    );
    step(`ghost text: ${JSON.stringify(report.ghostFirst)}`);
    await shot(page, "ghost-text");
    if (cfg.scenario === "install") {
      report.ok = true;
      step("done");
      return 0;
    }

    // 2. Escape dismisses it (reported as rejected); Alt+\ asks again (the server answers from its cache).
    await page.keyboard.press("Escape");
    await until("ghost text to go after Escape", async () => !(await ghostText(page)).trim(), 10000);
    step("dismissed with Escape");
    report.ghostText = await waitGhost(page, cfg.timeoutMs ?? 180000, 0);
    step(`asked again with Alt+\\: ${JSON.stringify(report.ghostText)}`);

    // 3. Ctrl+Right takes its first word, Tab the rest; the file saved to disk holds the suggestion.
    await page.keyboard.press("Control+ArrowRight");
    await new Promise((r) => setTimeout(r, 1000));
    report.ghostAfterWord = await ghostText(page);
    step(`accepted one word; ghost text left: ${JSON.stringify(report.ghostAfterWord)}`);
    report.pressedTab = Boolean(report.ghostAfterWord.trim());
    if (report.pressedTab) {
      await page.keyboard.press("Tab");
      await until("ghost text to go after Tab", async () => !(await ghostText(page)).trim(), 10000);
    }
    await page.keyboard.press("Control+S");
    report.savedAfterAccept = await until(
      "the accepted text on disk",
      async () => {
        const now = fs.readFileSync(testFile, "utf8");
        return now !== original && now.includes(TYPED_ASSERT) && !now.trimEnd().endsWith(TYPED_ASSERT.trim()) ? now : null;
      },
      15000,
    );
    step("saved; the file on disk holds more than the typed text");
    report.statusReady = await waitStatus(page, "ready", 30000);
    step(`status: "${report.statusReady}"`);
    await shot(page, "accepted-ready");

    // 4. Clicking the status bar item toggles suggestions off and on again.
    await page.locator(STATUS).first().click();
    report.statusToggledOff = await waitStatus(page, "disabled", 15000);
    await page.locator(STATUS).first().click();
    report.statusToggledOn = await waitStatus(page, "ready", 15000);
    step(`status bar click: "${report.statusToggledOff}", then "${report.statusToggledOn}"`);

    // 5. The command palette's "copilot-ls: Show Server Log" opens the output channel with the server's log.
    await page.keyboard.press("F1");
    await page.keyboard.type("copilot-ls: Show Server Log", { delay: 10 });
    await page.keyboard.press("Enter");
    report.serverLogShown = await until(
      "the server log in the output panel",
      async () => {
        const text = await page.locator(".panel .monaco-editor .view-lines").first().innerText().catch(() => "");
        return text.includes("[extension]") ? text.slice(0, 2000) : null;
      },
      15000,
    );
    step("server log shown");
    await shot(page, "server-log");
    await page.locator(".editor-instance .monaco-editor .view-lines").first().click();

    // 6. "copilot-ls: Set Backend API Key" keeps the key in secret storage and sends it to the server at once.
    await page.keyboard.press("F1");
    await page.keyboard.type("copilot-ls: Set Backend API Key", { delay: 10 });
    await page.keyboard.press("Enter");
    await page.locator(".quick-input-widget input[type=password]").first().waitFor({ timeout: 15000 });
    await page.keyboard.type(cfg.apiKey, { delay: 10 });
    await page.keyboard.press("Enter");
    report.apiKeySent = await until(
      "the API key to reach the server",
      () => findLogs(UD, "copilot-ls.log").some((f) => fs.readFileSync(f, "utf8").includes('"apiKey":"***"')),
      20000,
    );
    step("API key stored and sent");
    await page.locator(".editor-instance .monaco-editor .view-lines").first().click();

    // Workspace settings from here on: VS Code watches the workspace folder (edits of the user settings file made
    // behind its back are not picked up by code-server).
    fs.mkdirSync(path.join(cfg.workspace, ".vscode"), { recursive: true });

    // 7. Per-language enable: Python off.
    fs.writeFileSync(path.join(cfg.workspace, ".vscode", "settings.json"), JSON.stringify({ "copilot-ls.languages": { "*": true, python: false } }));
    report.statusLanguageOff = await waitStatus(page, "disabled for python", 20000);
    step(`status: "${report.statusLanguageOff}"`);

    // 8. Backend URL to a dead port (and Python on again): the status says so, and editing keeps working.
    step(`backend URL -> ${cfg.deadBackendUrl}`);
    fs.writeFileSync(path.join(cfg.workspace, ".vscode", "settings.json"), JSON.stringify({ "copilot-ls.backendUrl": cfg.deadBackendUrl }));
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+End");
    await page.keyboard.press("Enter");
    await page.keyboard.press("Enter");
    await page.keyboard.type(cfg.typedWhileDown, { delay: 25 });
    report.statusDown = await waitStatus(page, "backend down", 60000, async () => {
      await page.keyboard.press("Alt+Backslash");
    });
    step(`status: "${report.statusDown}"`);
    // 9. (Before any Escape, which hides toasts.) The server's "cannot reach the backend" toast names the backend URL: its button opens that setting.
    const toast = page.locator(".notification-toast", { hasText: "cannot reach the backend" }).first();
    await toast.waitFor({ timeout: 30000 });
    report.toastText = (await toast.innerText()).replace(/\s+/g, " ");
    report.toastButtons = await toast.locator(".monaco-button").allInnerTexts();
    step(`toast: ${JSON.stringify(report.toastText)} buttons ${JSON.stringify(report.toastButtons)}`);
    await toast.locator(".monaco-button", { hasText: "Open Setting" }).first().click();
    report.settingOpened = await until(
      "the settings editor on copilot-ls.backendUrl",
      async () => {
        const editor = page.locator(".settings-editor").first();
        if (!(await editor.count())) return null;
        const query = await editor.locator(".settings-header .monaco-editor .view-lines").first().innerText().catch(() => "");
        const rows = await editor.locator(".setting-item-contents .setting-item-title").allInnerTexts().catch(() => []);
        return query.includes("copilot-ls.backendUrl") && rows.some((r) => /Backend Url/i.test(r))
          ? `${query.trim()} -> ${rows.join(" | ")}`
          : null;
      },
      20000,
    );
    step(`setting opened: ${report.settingOpened}`);
    await shot(page, "setting-opened");
    // Back to the file (its tab) for the rest.
    await page.locator(".tabs-container .tab", { hasText: "test_lib.py" }).first().click();
    await page.locator(".editor-instance .monaco-editor .view-lines").first().click();
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+S");
    report.savedWhileDown = await until(
      "the text typed while the backend is down on disk",
      async () => {
        const now = fs.readFileSync(testFile, "utf8");
        return now.includes(cfg.typedWhileDown) ? now : null;
      },
      15000,
    );
    await shot(page, "backend-down");

    step("done");
    report.ok = true;
  } catch (err) {
    report.ok = false;
    report.error = err.stack ?? String(err);
    step(`FAILED: ${err.message}`);
    if (page) report.statusAtFailure = await statusText(page).catch(() => "");
    await shot(page, "failure");
  } finally {
    report.extensionLog = findLogs(UD, "copilot-ls.log").map((f) => ({ file: f, text: fs.readFileSync(f, "utf8") }));
    await browser?.close().catch(() => {});
    try {
      process.kill(-server.pid, "SIGTERM");
    } catch {
      /* already gone */
    }
    fs.writeFileSync(path.join(OUT, "report.json"), JSON.stringify(report, null, 2));
  }
  return report.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    fs.writeFileSync(path.join(OUT, "report.json"), JSON.stringify({ ...report, ok: false, error: String(err) }, null, 2));
    process.exit(1);
  },
);
