// Pure: what was shown, and what the user did with it. The extension reports each outcome to the server's
// bookkeeping command (see protocol.ts); the server keeps the statistics.

export interface Shown {
  uri: string;
  version: number; // document version when the items came back
  line: number;
  character: number;
  texts: string[]; // insert texts, in the order the server ranked them
  ids: (string | undefined)[]; // the server's item ids (from each item's copilot-ls.accepted command)
  taken: number[]; // characters of each item accepted so far by partial accepts (cumulative)
  at: number; // Date.now() when shown
}

/** The server's id of an item: the argument of the `copilot-ls.accepted` command it carries. */
export function itemId(command: { command: string; arguments?: unknown[] } | undefined, accepted: string): string | undefined {
  if (!command || command.command !== accepted) return undefined;
  const arg = command.arguments?.[0];
  return typeof arg === "string" ? arg : undefined;
}

/**
 * The text that turned `before` into `after` when the change is one insertion (what accepting a
 * suggestion, or part of one, does). "" when nothing was inserted.
 */
export function insertedText(before: string, after: string): string {
  let start = 0;
  const max = Math.min(before.length, after.length);
  while (start < max && before.charCodeAt(start) === after.charCodeAt(start)) start++;
  let endB = before.length;
  let endA = after.length;
  while (endB > start && endA > start && before.charCodeAt(endB - 1) === after.charCodeAt(endA - 1)) {
    endB--;
    endA--;
  }
  return after.slice(start, endA);
}

/**
 * Which shown item a partial accept belongs to: the first whose text contains the inserted piece at its start
 * (after the part of it typed or accepted before), else the top item.
 */
export function matchItem(shown: Shown, inserted: string): number {
  const i = shown.texts.findIndex((t) => t.trimStart().startsWith(inserted.trimStart()) || t.includes(inserted));
  return i < 0 ? 0 : i;
}
