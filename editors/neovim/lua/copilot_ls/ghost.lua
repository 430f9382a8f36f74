--- Our own ghost text, for Neovim without vim.lsp.inline_completion (0.10, 0.11).
---
--- On each text change in insert mode (debounced) ask the server for textDocument/inlineCompletion; show the
--- current item's first line as inline virtual text at the cursor and the other lines as virtual lines below.
--- It disappears when the cursor moves, the mode changes or the popup menu shows. Tab accepts, <M-]>/<M-[>
--- cycle, <C-]> dismisses; accept and dismiss are reported to the server (report.lua).
local client_mod = require('copilot_ls.client')
local position = require('copilot_ls.position')
local report = require('copilot_ls.report')

local api = vim.api
local M = {}

M.ns = api.nvim_create_namespace('copilot_ls.ghost')

-- Defined by ui.lua (setup() option `highlight`).
local HL = require('copilot_ls.ui').ghost_group
local HL_HINT = require('copilot_ls.ui').hint_group

local TRIGGER_INVOKED, TRIGGER_AUTOMATIC = 1, 2

---@class copilot_ls.GhostState
---@field timer? uv.uv_timer_t
---@field request? { client_id: integer, id: integer }
---@field items? table[]     -- shown items, each { item, client_id, start, stop, text, typed }
---@field index integer
---@field anchor? integer[]  -- { row (0-based), col (byte) } of the cursor when shown
---@field tick? integer      -- b:changedtick when shown
---@field disabled? boolean  -- setting enable = false

---@type table<integer, copilot_ls.GhostState>
local states = {}

M.debounce_ms = 30

local function state(bufnr)
  local s = states[bufnr]
  if not s then
    s = { index = 1 }
    states[bufnr] = s
  end
  return s
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return { pos[1] - 1, pos[2] }
end

local function in_insert()
  return api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

local function stop_timer(s)
  if s.timer then
    s.timer:stop()
    s.timer:close()
    s.timer = nil
  end
end

local function cancel_request(s)
  local req = s.request
  s.request = nil
  if req then
    local client = vim.lsp.get_client_by_id(req.client_id)
    -- Only a request still pending (not one a stopping client has already dropped).
    local pending = client and client.requests and client.requests[req.id]
    if pending and pending.type == 'pending' then
      client_mod.cancel_request(client, req.id)
    end
  end
end

--- Remove the ghost text of `bufnr` (and forget its items).
function M.clear(bufnr)
  local s = states[bufnr]
  if s then
    s.items, s.anchor, s.tick, s.index = nil, nil, nil, 1
  end
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

--- Whether ghost text is shown in `bufnr`.
function M.visible(bufnr)
  local s = states[bufnr]
  return s ~= nil and s.items ~= nil and #s.items > 0
end

--- How many suggestions are shown (0 when none).
function M.count(bufnr)
  local s = states[bufnr]
  return s and s.items and #s.items or 0
end

--- The text of the current suggestion still to be inserted (nil when none), for tests and statuslines.
function M.current_text(bufnr)
  local s = states[bufnr]
  if not (s and s.items and s.items[s.index]) then
    return nil
  end
  local shown = s.items[s.index]
  return shown.text:sub(#shown.typed + 1)
end

local function insert_text_of(item)
  local t = item.insertText
  if type(t) == 'table' then -- StringValue (snippet): show and insert its plain text
    t = (t.value or ''):gsub('%$%b{}', ''):gsub('%$%d+', '')
  end
  return t or ''
end

--- Turn an LSP item into what we show, or nil when it does not fit the buffer at the cursor: its range must
--- be on the cursor line, and its text must start with what the range already holds before the cursor.
local function prepare(bufnr, item, client, cur)
  local enc = client.offset_encoding or 'utf-16'
  local line = api.nvim_buf_get_lines(bufnr, cur[1], cur[1] + 1, false)[1] or ''
  local start, stop = { cur[1], cur[2] }, { cur[1], cur[2] }
  if item.range then
    local rs, re = item.range.start, item.range['end']
    if rs.line ~= cur[1] or re.line ~= cur[1] then
      return nil
    end
    start = { cur[1], position.to_byte(line, rs.character, enc) }
    stop = { cur[1], position.to_byte(line, re.character, enc) }
    if start[2] > cur[2] or stop[2] < cur[2] then
      return nil
    end
  end
  local text = insert_text_of(item)
  local typed = line:sub(start[2] + 1, cur[2])
  if text:sub(1, #typed) ~= typed or #text == #typed then
    return nil
  end
  return { item = item, client_id = client.id, start = start, stop = stop, text = text, typed = typed }
end

local function render(bufnr, s)
  api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  local shown = s.items[s.index]
  local lines = vim.split(shown.text:sub(#shown.typed + 1), '\n', { plain = true })
  local first = { { lines[1], HL } }
  if #s.items > 1 then
    table.insert(first, { (' (%d/%d)'):format(s.index, #s.items), HL_HINT })
  end
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], HL } }
  end
  api.nvim_buf_set_extmark(bufnr, M.ns, s.anchor[1], s.anchor[2], {
    virt_text = first,
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
    right_gravity = false,
  })
end

local function on_result(bufnr, s, client, tick, cur, err, result)
  if err then -- cancelled (a newer request is on its way) or failed: leave the screen as it is
    return
  end
  -- Drop answers to an older state of the buffer: the user kept typing or moved.
  if api.nvim_get_current_buf() ~= bufnr or not in_insert() or vim.fn.pumvisible() == 1 then
    return
  end
  if api.nvim_buf_get_changedtick(bufnr) ~= tick or not vim.deep_equal(cursor(), cur) then
    return
  end
  local items = {}
  for _, item in ipairs(result and (result.items or result) or {}) do
    local shown = prepare(bufnr, item, client, cur)
    if shown then
      items[#items + 1] = shown
    end
  end
  if #items == 0 then -- the server has nothing for exactly this text: drop what we kept on screen
    M.clear(bufnr)
    return
  end
  s.items, s.index, s.anchor, s.tick = items, 1, cur, tick
  render(bufnr, s)
end

--- Ask the server now for a suggestion at the cursor of the current window.
function M.request(bufnr, trigger)
  local s = state(bufnr)
  cancel_request(s)
  if s.disabled then
    return
  end
  local client = client_mod.get(bufnr)
  if not client or not in_insert() or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local cur, tick = cursor(), api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding or 'utf-16')
  params.context = { triggerKind = trigger or TRIGGER_AUTOMATIC }
  local ok, id = client_mod.request(client, 'textDocument/inlineCompletion', params, function(err, result)
    if s.request and s.request.id == id then
      s.request = nil
    end
    on_result(bufnr, s, client, tick, cur, err, result)
  end, bufnr)
  if ok and id then
    s.request = { client_id = client.id, id = id }
  end
end

local function schedule(bufnr)
  local s = state(bufnr)
  if s.disabled then
    return
  end
  stop_timer(s)
  s.timer = vim.uv.new_timer()
  s.timer:start(M.debounce_ms, 0, function()
    vim.schedule(function()
      stop_timer(s)
      if api.nvim_buf_is_valid(bufnr) then
        M.request(bufnr, TRIGGER_AUTOMATIC)
      end
    end)
  end)
end

--- Forget everything about `bufnr`: ghost text, timer, request in flight.
function M.reset(bufnr)
  local s = states[bufnr]
  if s then
    stop_timer(s)
    cancel_request(s)
  end
  M.clear(bufnr)
end

--- The suggestion shown in `bufnr`, or nil when nothing is shown.
local function shown_item(bufnr)
  if not M.visible(bufnr) then
    return nil
  end
  local s = states[bufnr]
  return s.items[s.index]
end

--- Send one bookkeeping event (`report[event]`) for `shown` to the client that produced it.
local function tell(event, bufnr, shown, ...)
  local client = vim.lsp.get_client_by_id(shown.client_id)
  if client then
    report[event](client, bufnr, shown.item, ...)
  end
end

--- Replace [start, stop) (0-based rows, byte columns) with `text`; the cursor goes after the inserted text.
local function put_text(bufnr, start, stop, text)
  local lines = vim.split(text, '\n', { plain = true })
  api.nvim_buf_set_text(bufnr, start[1], start[2], stop[1], stop[2], lines)
  -- 1-based row of the last inserted line; its column after the text
  api.nvim_win_set_cursor(0, { start[1] + #lines, (#lines == 1 and start[2] or 0) + #lines[#lines] })
end

--- Accept the shown suggestion. Returns false when nothing is shown (so the key can do its usual job).
function M.accept(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local shown = shown_item(bufnr)
  if not shown then
    return false
  end
  M.reset(bufnr)
  put_text(bufnr, shown.start, shown.stop, shown.text)
  tell('accepted', bufnr, shown)
  return true
end

--- Accept the next word (`kind` = 'word') or line ('line') of the shown suggestion; the rest stays shown.
--- Returns false when nothing is shown.
function M.accept_part(bufnr, kind)
  bufnr = bufnr or api.nvim_get_current_buf()
  local shown = shown_item(bufnr)
  if not shown then
    return false
  end
  local rest = shown.text:sub(#shown.typed + 1)
  local take = require('copilot_ls.part')[kind](rest)
  if take == rest then
    return M.accept(bufnr)
  end
  local cur = cursor()
  put_text(bufnr, cur, cur, take) -- TextChangedI then keeps the rest on screen (narrow) and asks again
  tell('partially_accepted', bufnr, shown, take)
  return true
end

--- Dismiss the shown suggestion. Returns false when nothing is shown.
function M.dismiss(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local shown = shown_item(bufnr)
  if not shown then
    return false
  end
  M.reset(bufnr)
  tell('rejected', bufnr, shown)
  return true
end

--- Show the next (`delta` = 1) or previous (-1) suggestion; with none shown, ask the server now.
function M.cycle(bufnr, delta)
  bufnr = bufnr or api.nvim_get_current_buf()
  if not M.visible(bufnr) then
    M.request(bufnr, TRIGGER_INVOKED)
    return
  end
  local s = states[bufnr]
  s.index = (s.index - 1 + delta) % #s.items + 1
  render(bufnr, s)
end

--- After a change on the suggestion's line: keep the items whose text still starts with what the line now
--- holds (the user typed the suggestion's first characters, or deleted some), re-anchored at the cursor.
--- Returns whether any is left. This keeps the ghost text steady while the server's answer comes.
local function narrow(bufnr, s)
  local cur = cursor()
  if not s.anchor or cur[1] ~= s.anchor[1] then
    return false
  end
  local line = api.nvim_buf_get_lines(bufnr, cur[1], cur[1] + 1, false)[1] or ''
  local delta = cur[2] - s.anchor[2]
  local kept = {}
  for i, shown in ipairs(s.items) do
    local typed = line:sub(shown.start[2] + 1, cur[2])
    local stop = { shown.stop[1], shown.stop[2] + delta }
    if cur[2] >= shown.start[2] and stop[2] >= cur[2] and #shown.text > #typed
      and shown.text:sub(1, #typed) == typed then
      kept[#kept + 1] = vim.tbl_extend('force', shown, { typed = typed, stop = stop })
      if i == s.index then
        s.index = #kept
      end
    end
  end
  if #kept == 0 then
    return false
  end
  s.items, s.anchor, s.tick = kept, cur, api.nvim_buf_get_changedtick(bufnr)
  s.index = math.min(s.index, #kept)
  return true
end

--- Watch `bufnr` (called when our client attaches to it).
function M.attach(bufnr)
  local group = api.nvim_create_augroup('copilot_ls.ghost.' .. bufnr, { clear = true })
  local function on(events, fn)
    api.nvim_create_autocmd(events, { group = group, buffer = bufnr, callback = fn })
  end
  on('TextChangedI', function()
    local s = states[bufnr]
    if s and s.items and vim.fn.pumvisible() == 0 and narrow(bufnr, s) then
      render(bufnr, s)
    else
      M.clear(bufnr)
    end
    if vim.fn.pumvisible() == 0 then
      schedule(bufnr)
    end
  end)
  on({ 'TextChangedP', 'CompleteChanged' }, function()
    -- The popup menu is open: no ghost text next to it, no request until it closes.
    M.reset(bufnr)
  end)
  on('CompleteDone', function()
    if in_insert() then
      schedule(bufnr)
    end
  end)
  on('CursorMovedI', function()
    -- A move without a change hides the ghost text; after a change TextChangedI (which comes next) decides.
    local s = states[bufnr]
    if s and s.anchor and not vim.deep_equal(cursor(), s.anchor)
      and api.nvim_buf_get_changedtick(bufnr) == s.tick then
      M.clear(bufnr)
    end
  end)
  on({ 'InsertLeave', 'BufLeave' }, function()
    M.reset(bufnr)
  end)
  on('BufUnload', function()
    M.reset(bufnr)
    states[bufnr] = nil
  end)
end

--- Turn suggestions in `bufnr` on or off (setting `enable`).
function M.enable(bufnr, on)
  if not on then
    M.reset(bufnr)
  end
  state(bufnr).disabled = not on
end

function M.detach(bufnr)
  M.reset(bufnr)
  states[bufnr] = nil
  pcall(api.nvim_del_augroup_by_name, 'copilot_ls.ghost.' .. bufnr)
end

return M
