// VS Code wiring only: start `copilot-ls` over stdio, forward settings, show state, report outcomes.
// Logic that needs no `vscode` lives in config.ts, serverCommand.ts, status.ts, bookkeeping.ts, protocol.ts.
import * as fs from "fs";
import * as os from "os";
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
  Middleware,
  ServerOptions,
  State,
  StaticFeature,
  TransportKind,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
} from "vscode-languageclient/node";
import { Shown, insertedText, itemId, matchItem } from "./bookkeeping";
import { API_KEY_SECRET, ExtensionSettings, RESTART_KEYS, SECTION, languageEnabled, readSettings, serverSettings } from "./config";
import { SERVER_COMMANDS, parseStatus } from "./protocol";
import { resolveServerCommand } from "./serverCommand";
import { INITIAL, Status, logLevel, present } from "./status";

const ACCEPTED_COMMAND = "copilot-ls._accepted"; // attached to every item; VS Code runs it when one is accepted
const SHOWN_CONTEXT = "copilot-ls.suggestionShown";
const STATUS_POLL_MS = 5000;

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
    const cmd = resolveServerCommand(
      {
        serverCommand: this.settings.serverCommand,
        pythonPath: this.settings.pythonPath,
        serverArgs: this.settings.serverArgs,
        pathEnv: process.env.PATH ?? "",
        workspaceFolders: (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === "file").map((f) => f.uri.fsPath),
        home: os.homedir(),
        windows: process.platform === "win32",
      },
      isExecutable,
    );
    if (!cmd) {
      const why = "copilot-ls was not found on PATH or in the workspace .venv; set copilot-ls.server.command or copilot-ls.server.pythonPath.";
      this.log(why);
      this.update({ server: "failed", serverError: why });
      void vscode.window.showErrorMessage(`copilot-ls: ${why}`, "Open Settings").then((pick) => {
        if (pick) void vscode.commands.executeCommand("workbench.action.openSettings", "copilot-ls.server");
      });
      return;
    }
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

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
