--- Accept / dismiss bookkeeping through workspace/executeCommand (the server counts them locally; nothing
--- leaves the machine). copilot-ls gives each item the command { "copilot-ls.accepted", { item_id } }.
local client_mod = require('copilot_ls.client')

local M = {}

M.commands = {
  accepted = 'copilot-ls.accepted',
  partial = 'copilot-ls.partiallyAccepted',
  rejected = 'copilot-ls.rejected',
}

-- item id -> characters of it taken so far by partial accepts (the server wants the running total)
local taken = {}

local function supports(client, name)
  local provider = client.server_capabilities and client.server_capabilities.executeCommandProvider
  return type(provider) == 'table' and vim.tbl_contains(provider.commands or {}, name)
end

local function execute(client, bufnr, command, arguments)
  client_mod.request(client, 'workspace/executeCommand', {
    command = command,
    arguments = arguments,
  }, function() end, bufnr)
end

--- The server's id of `item` (the argument of its accepted command), if it has one.
local function item_id(item)
  local cmd = item.command
  if type(cmd) == 'table' and cmd.command == M.commands.accepted and type(cmd.arguments) == 'table' then
    return cmd.arguments[1]
  end
end

--- The user accepted `item` (an LSP InlineCompletionItem): run the item's own command, as VS Code does.
function M.accepted(client, bufnr, item)
  local cmd = item.command
  if type(cmd) == 'table' and type(cmd.command) == 'string' then
    execute(client, bufnr, cmd.command, cmd.arguments)
  end
end

--- The user took the first `text` of what `item` still offered (a word, a line).
function M.partially_accepted(client, bufnr, item, text)
  local id = item_id(item)
  if id == nil or not supports(client, M.commands.partial) then
    return
  end
  taken[id] = (taken[id] or 0) + vim.fn.strchars(text)
  execute(client, bufnr, M.commands.partial, { id, taken[id] })
end

--- The user dismissed `item`: report it with our rejected command.
function M.rejected(client, bufnr, item)
  local id = item_id(item)
  if id ~= nil and supports(client, M.commands.rejected) then
    execute(client, bufnr, M.commands.rejected, { id })
  end
end

return M
