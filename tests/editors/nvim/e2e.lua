-- Drives a headless Neovim through one scenario with the copilot_ls plugin; test_neovim_e2e.py runs it as
--   timeout ... nvim --headless --clean -n -c 'luafile tests/editors/nvim/e2e.lua'   (cwd: the workspace)
-- Input (environment): COPILOT_LS_PLUGIN (editors/neovim), COPILOT_LS_CMD and COPILOT_LS_SETTINGS (JSON),
-- COPILOT_LS_MODE (auto | ghost), COPILOT_LS_FILE (the file to edit), COPILOT_LS_TIMEOUT_MS,
-- COPILOT_LS_SCENARIO (accept | partial | dismiss | move | typeahead | popup | cycle | settings | unicode |
-- dead_backend | outage | health), COPILOT_LS_ENCODING (offer only this position encoding),
-- COPILOT_LS_LIVE_URL (settings), COPILOT_LS_DEAD_WAIT_MS (dead_backend), COPILOT_LS_RESULT (where the JSON
-- result goes). Keys are fed as typed keys; the script waits by polling from a coroutine on timers, never
-- blocking the event loop. Exit code 0 unless it crashed; a failed wait is written as result.error.
local env = vim.env
local api = vim.api

vim.g.loaded_python3_provider = 0
vim.o.termguicolors = false -- ghost text must show without truecolor too
vim.o.showmode = false
vim.o.swapfile = false
vim.opt.shortmess:append('Ic')
vim.opt.runtimepath:prepend(env.COPILOT_LS_PLUGIN)
vim.cmd('runtime! plugin/copilot_ls.lua')

local timeout_ms = tonumber(env.COPILOT_LS_TIMEOUT_MS or '90000')
local scenario = env.COPILOT_LS_SCENARIO
local result = { scenario = scenario, version = tostring(vim.version()), events = {}, messages = {} }
local t0 = vim.uv.hrtime()

local function event(name, extra)
  local e = { name = name, ms = math.floor((vim.uv.hrtime() - t0) / 1e6) }
  for k, v in pairs(extra or {}) do
    e[k] = v
  end
  table.insert(result.events, e)
end

local function finish(err)
  if err then
    result.error = tostring(err)
  end
  pcall(function()
    result.lines = api.nvim_buf_get_lines(0, 0, -1, false)
  end)
  pcall(require('copilot_ls').stop, 3000)
  local f = assert(io.open(env.COPILOT_LS_RESULT, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qa!')
end

-- What the plugin shows (the server's window/showMessage go through vim.notify, e.g. "backend down") is kept
-- for the test to read.
local notify = vim.notify
vim.notify = function(msg, ...)
  table.insert(result.messages, msg)
  return notify(msg, ...)
end

local co
local function sleep(ms)
  vim.defer_fn(function()
    local ok, err = coroutine.resume(co)
    if not ok then
      finish(debug.traceback(co, err))
    end
  end, ms)
  coroutine.yield()
end

local function wait_until(what, pred, ms)
  local deadline = vim.uv.now() + (ms or timeout_ms)
  while vim.uv.now() < deadline do
    local ok, v = pcall(pred)
    if ok and v then
      return v
    end
    sleep(25)
  end
  error('timed out waiting for ' .. what, 0)
end

local function feed(keys, flags)
  api.nvim_feedkeys(api.nvim_replace_termcodes(keys, true, false, true), flags, false)
end

local function line(row)
  return api.nvim_buf_get_lines(0, row, row + 1, false)[1]
end

local function status_of_server()
  local client = require('copilot_ls.client').get(0)
  local provider = client and client.server_capabilities.executeCommandProvider
  local commands = provider and provider.commands or {}
  result.server_commands = commands
  for _, name in ipairs(commands) do
    if name:match('status$') then
      local reply = client:request_sync('workspace/executeCommand', { command = name, arguments = {} }, 5000, 0)
      result.status = reply and (reply.result or reply.err)
      return
    end
  end
end

local function type_test(typed)
  -- What the user types, at the end of test_lib.py: a test function, then an assert to complete.
  vim.bo.autoindent, vim.bo.indentexpr, vim.bo.smartindent = false, '', false
  local last = api.nvim_buf_line_count(0)
  api.nvim_win_set_cursor(0, { last, 0 })
  result.row = last - 1 -- 0-based row of the def line
  result.typed = typed or { 'def test_common_prefix():', '    assert common_prefix(' }
  feed('i' .. result.typed[1] .. '<CR>' .. result.typed[2], 'nt')
  wait_until('the typed text', function()
    return line(result.row + 1) == result.typed[2] and api.nvim_get_mode().mode == 'i'
  end, 10000)
  event('typed')
end

-- Wait for ghost text from the model (no retyping: one change must be enough).
local function wait_ghost(plugin)
  return wait_until('ghost text', function()
    return plugin.visible() and plugin.current_text()
  end)
end

-- The highlight the shown ghost text is drawn with: its first chunk's group, and that group resolved.
local function ghost_highlight()
  local namespaces = api.nvim_get_namespaces()
  for _, name in ipairs({ 'copilot_ls.ghost', 'nvim.lsp.inline_completion' }) do
    local ns = namespaces[name]
    for _, mark in ipairs(ns and api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true }) or {}) do
      local chunk = (mark[4].virt_text or {})[1] or ((mark[4].virt_lines or {})[1] or {})[1]
      if chunk and type(chunk[2]) == 'string' then
        return { group = chunk[2], resolved = api.nvim_get_hl(0, { name = chunk[2], link = false }) }
      end
    end
  end
end

local scenarios = {}

function scenarios.accept(plugin)
  type_test()
  result.ghost = wait_ghost(plugin)
  result.ghost_highlight = ghost_highlight()
  event('ghost', { text = result.ghost })
  feed('<Tab>', 'mt')
  wait_until('the suggestion in the buffer', function()
    return line(result.row + 1) ~= result.typed[2]
  end, 10000)
  event('accepted')
  result.after_accept = api.nvim_buf_get_lines(0, result.row, -1, false)
  feed('<Esc>', 'nt')
  wait_until('normal mode', function()
    return api.nvim_get_mode().mode == 'n'
  end, 5000)
  sleep(300) -- let the bookkeeping command reach the server
  status_of_server()
end

function scenarios.dismiss(plugin)
  type_test()
  result.ghost = wait_ghost(plugin)
  event('ghost', { text = result.ghost })
  feed('<C-]>', 'mt')
  wait_until('the ghost text to go', function()
    return not plugin.visible()
  end, 5000)
  event('dismissed')
  result.after_dismiss = api.nvim_buf_get_lines(0, result.row, -1, false)
  feed('<Esc>', 'nt')
  sleep(300)
  status_of_server()
end

-- Own ghost text only: it goes when the cursor moves and when insert mode ends.
function scenarios.move(plugin)
  type_test()
  result.ghost = wait_ghost(plugin)
  feed('<Left>', 'nt')
  wait_until('the ghost text to go after <Left>', function()
    return not plugin.visible()
  end, 2000)
  event('moved')
  sleep(500)
  result.visible_after_move = plugin.visible() -- a move alone asks for nothing new
  feed('<End> <BS>', 'nt') -- a change: ask again
  result.ghost_again = wait_until('ghost text again', function()
    return plugin.visible() and plugin.current_text()
  end)
  event('ghost_again')
  feed('<Esc>', 'nt')
  wait_until('normal mode', function()
    return api.nvim_get_mode().mode == 'n'
  end, 5000)
  result.visible_after_esc = plugin.visible()
  result.after_esc = api.nvim_buf_get_lines(0, result.row, -1, false)
end

-- Characters outside ASCII before the cursor (2-byte é, 3-byte CJK, a 4-byte emoji that is 2 UTF-16 units):
-- positions must be converted right in whatever encoding was negotiated.
function scenarios.unicode(plugin)
  type_test({ 'def test_common_prefix_unicode():', '    assert common_prefix("é日😀x", "é日😀y") == "é日😀" and common_prefix(' })
  result.encoding = require('copilot_ls.client').get(0).offset_encoding
  result.ghost = wait_ghost(plugin)
  feed('<Tab>', 'mt')
  wait_until('the suggestion in the buffer', function()
    return line(result.row + 1) ~= result.typed[2]
  end, 10000)
  result.after_accept = api.nvim_buf_get_lines(0, result.row, -1, false)
  feed('<Esc>', 'nt')
  sleep(300)
  status_of_server()
end

-- Own ghost text only: typing the suggestion's first character keeps the rest on screen (no flicker while the
-- server answers again), and Tab then inserts the rest.
function scenarios.typeahead(plugin)
  type_test()
  result.ghost = wait_ghost(plugin)
  local first = result.ghost:sub(1, 1)
  feed(first == '<' and '<lt>' or first, 'nt')
  result.hidden_polls, result.polls = 0, 0
  local deadline = vim.uv.now() + 600
  while vim.uv.now() < deadline do
    if line(result.row + 1) == result.typed[2] .. first then
      result.polls = result.polls + 1
      if not plugin.visible() then
        result.hidden_polls = result.hidden_polls + 1
      end
      result.rest = result.rest or plugin.current_text()
    end
    sleep(5)
  end
  feed('<Tab>', 'mt')
  wait_until('the suggestion in the buffer', function()
    return line(result.row + 1) ~= result.typed[2] .. first
  end, 10000)
  result.after_accept = api.nvim_buf_get_lines(0, result.row, -1, false)
  feed('<Esc>', 'nt')
  sleep(300)
  status_of_server()
end

-- Own ghost text only: never beside the popup menu.
function scenarios.popup(plugin)
  type_test()
  result.ghost = wait_ghost(plugin)
  feed('<C-n>', 'nt') -- keyword completion opens the popup menu
  wait_until('the popup menu', function()
    return vim.fn.pumvisible() == 1
  end, 5000)
  event('popup')
  result.visible_with_popup = false
  for _ = 1, 40 do -- 1 s with the menu open: the ghost text must not come back
    if plugin.visible() and vim.fn.pumvisible() == 1 then
      result.visible_with_popup = true
    end
    sleep(25)
  end
  feed('<C-e>', 'nt') -- close the menu, restoring the typed text
  wait_until('the popup menu to close', function()
    return vim.fn.pumvisible() == 0
  end, 5000)
  result.after_popup = api.nvim_buf_get_lines(0, result.row, -1, false)
  result.ghost_after_popup = wait_until('ghost text after the menu closed', function()
    return plugin.visible() and plugin.current_text()
  end)
  feed('<Esc>', 'nt')
end

-- Partial accept: <M-Right> takes the next word of the suggestion and the rest stays offered; Tab takes it.
function scenarios.partial(plugin)
  type_test()
  result.ghost = wait_ghost(plugin)
  feed('<M-Right>', 'mt')
  wait_until('the first word in the buffer', function()
    return line(result.row + 1) ~= result.typed[2]
  end, 10000)
  result.after_word = line(result.row + 1)
  result.rest = wait_ghost(plugin)
  feed('<Tab>', 'mt')
  wait_until('the rest in the buffer', function()
    return line(result.row + 1) ~= result.after_word
  end, 10000)
  result.after_accept = api.nvim_buf_get_lines(0, result.row, -1, false)
  feed('<Esc>', 'nt')
  sleep(300)
  status_of_server()
end

-- Several candidates (settings.n > 1): <M-]> shows the next, <M-[> goes back, Tab takes the one shown.
function scenarios.cycle(plugin)
  type_test()
  result.ghost = wait_ghost(plugin)
  result.count = plugin.count()
  feed('<M-]>', 'mt')
  sleep(200)
  result.ghost_next = plugin.current_text()
  result.count_after_next = plugin.count()
  feed('<M-[>', 'mt')
  sleep(200)
  result.ghost_back = plugin.current_text()
  feed('<Tab>', 'mt')
  wait_until('the suggestion in the buffer', function()
    return line(result.row + 1) ~= result.typed[2]
  end, 10000)
  result.after_accept = api.nvim_buf_get_lines(0, result.row, -1, false)
  feed('<Esc>', 'nt')
  sleep(300)
  status_of_server()
end

-- Settings change at run time (workspace/didChangeConfiguration): from a dead backend to the live one.
function scenarios.settings(plugin)
  type_test()
  wait_until('the server to give up on the dead backend', function()
    return #result.messages > 0
  end, 30000)
  result.ghost_dead = plugin.current_text()
  plugin.set_settings({ backendUrl = env.COPILOT_LS_LIVE_URL })
  feed('<BS>(', 'nt') -- the next change asks again, now of the live backend
  result.ghost = wait_ghost(plugin)
  -- :CopilotLs toggle turns suggestions off (enable = false reaches the server); the same text again, which
  -- an enabled server would answer at once from its cache, now shows nothing.
  vim.cmd('CopilotLs toggle')
  feed('<BS>(', 'nt')
  local deadline = vim.uv.now() + 1500
  result.visible_when_off = false
  while vim.uv.now() < deadline do
    result.visible_when_off = result.visible_when_off or plugin.visible()
    sleep(25)
  end
  feed('<Esc>', 'nt')
  sleep(100)
  status_of_server()
end

function scenarios.dead_backend(plugin)
  type_test()
  -- Give the server time to try the dead backend; nothing may show, and editing must go on as usual.
  local deadline = vim.uv.now() + tonumber(env.COPILOT_LS_DEAD_WAIT_MS or '4000')
  while vim.uv.now() < deadline do
    if plugin.visible() then
      result.ghost = plugin.current_text()
    end
    sleep(50)
  end
  feed('"ab", "ac")<Tab>== "a"<Esc>', 'mt')
  wait_until('normal mode', function()
    return api.nvim_get_mode().mode == 'n'
  end, 10000)
  event('typed_more')
  result.after_typing = api.nvim_buf_get_lines(0, result.row, -1, false)
  result.client_alive = require('copilot_ls.client').get(0) ~= nil
  feed('u', 'nt') -- undo still works
  sleep(100)
  result.after_undo = api.nvim_buf_get_lines(0, result.row, -1, false)
end

-- In a real terminal (tmux, 80 columns, no truecolor; the test watches the screen for "Press ENTER"): a dead
-- backend while a file is opened and typed into. Records the message history and the ghost highlight.
function scenarios.outage()
  type_test()
  local deadline = vim.uv.now() + tonumber(env.COPILOT_LS_DEAD_WAIT_MS or '5000')
  result.modes = {}
  local i = 0
  while vim.uv.now() < deadline do
    i = i + 1
    if i % 20 == 0 then
      feed(i % 40 == 0 and '<BS>' or '(', 'nt') -- keep asking, as typing does
    end
    result.modes[api.nvim_get_mode().mode] = true
    sleep(25)
  end
  feed('<Esc>', 'nt')
  wait_until('normal mode', function()
    return api.nvim_get_mode().mode == 'n'
  end, 5000)
  result.columns = vim.o.columns
  result.termguicolors = vim.o.termguicolors
  result.history = vim.split(vim.fn.execute('messages'), '\n', { trimempty = true })
  result.ghost_hl = api.nvim_get_hl(0, { name = 'CopilotLsGhost', link = false })
  result.complhint_hl = api.nvim_get_hl(0, { name = 'ComplHint', link = false })
end

function scenarios.health()
  vim.cmd('checkhealth copilot_ls')
  result.health = api.nvim_buf_get_lines(0, 0, -1, false)
  vim.cmd('bwipeout!')
end

-- A client that offers only one position encoding (Neovim offers utf-8, utf-16 and utf-32 by default).
if env.COPILOT_LS_ENCODING then
  local make = vim.lsp.protocol.make_client_capabilities
  vim.lsp.protocol.make_client_capabilities = function()
    local caps = make()
    caps.general = caps.general or {}
    caps.general.positionEncodings = { env.COPILOT_LS_ENCODING }
    return caps
  end
end

co = coroutine.create(function()
  local plugin = require('copilot_ls')
  plugin.setup({
    cmd = vim.json.decode(env.COPILOT_LS_CMD),
    settings = vim.json.decode(env.COPILOT_LS_SETTINGS or '{}'),
    mode = env.COPILOT_LS_MODE or 'auto',
  })
  result.path = plugin.path
  if scenario ~= 'health' then
    vim.cmd('edit ' .. vim.fn.fnameescape(env.COPILOT_LS_FILE))
    wait_until('the server to attach', function()
      local c = require('copilot_ls.client').get(0)
      return c and c.initialized
    end, 30000)
    event('attached')
  end
  scenarios[scenario](plugin)
  finish()
end)

vim.defer_fn(function()
  finish('scenario did not finish within the deadline')
end, timeout_ms + 30000)

local ok, err = coroutine.resume(co)
if not ok then
  finish(debug.traceback(co, err))
end
