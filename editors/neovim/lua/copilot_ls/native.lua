--- Neovim's own inline completion (vim.lsp.inline_completion, 0.12+): we enable it for the buffers our
--- server attaches to and add the keys and the bookkeeping. Neovim requests, shows and cycles by itself.
local report = require('copilot_ls.report')

local api = vim.api
local M = {}

M.ns_name = 'nvim.lsp.inline_completion'

function M.attach(bufnr)
  vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
end

function M.detach(bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    vim.lsp.inline_completion.enable(false, { bufnr = bufnr })
  end
end

--- Turn suggestions in `bufnr` on or off (setting `enable`): Neovim's inline completion follows.
function M.enable(bufnr, on)
  vim.lsp.inline_completion.enable(on, { bufnr = bufnr })
end

--- Whether Neovim shows a suggestion in `bufnr`.
function M.visible(bufnr)
  local ns = api.nvim_get_namespaces()[M.ns_name]
  return ns ~= nil and #api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { limit = 1 }) > 0
end

--- The LSP item shape that report.lua expects, from Neovim's vim.lsp.inline_completion.Item.
local function lsp_item(item)
  return { insertText = item.insert_text, command = item.command }
end

--- Start/end (0-based rows, byte columns) of a vim.Range, whichever shape this Neovim build gives it.
local function bounds(r)
  if r.start and r.end_ then
    return r.start.row, r.start.col, r.end_.row, r.end_.col
  elseif r.start_row then
    return r.start_row, r.start_col, r.end_row, r.end_col
  end
end

local function apply(bufnr, item)
  local text = item.insert_text
  if type(text) ~= 'string' then
    vim.snippet.expand(text.value)
    return
  end
  local sr, sc, er, ec
  if item.range then
    sr, sc, er, ec = bounds(item.range)
  end
  if not sr then
    api.nvim_paste(text, false, -1)
    return
  end
  local lines = vim.split(text, '\n', { plain = true })
  api.nvim_buf_set_text(bufnr, sr, sc, er, ec, lines)
  local win = vim.fn.bufwinid(bufnr)
  if win ~= -1 then
    api.nvim_win_set_cursor(win, { sr + #lines, (#lines == 1 and sc or 0) + #lines[#lines] })
  end
end

--- Accept the shown suggestion; false when none is shown.
function M.accept(bufnr)
  return vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)
      apply(bufnr, item)
      local client = vim.lsp.get_client_by_id(item.client_id)
      if client then
        report.accepted(client, bufnr, lsp_item(item))
      end
    end,
  })
end

--- Accept the next word (`kind` = 'word') or line ('line') of the shown suggestion; false when none is
--- shown. Neovim then asks again and the server answers the rest from its typed-ahead cache.
function M.accept_part(bufnr, kind)
  return vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)
      local text = item.insert_text
      if type(text) ~= 'string' then
        apply(bufnr, item)
        return
      end
      local win = vim.fn.bufwinid(bufnr)
      local row, col = unpack(api.nvim_win_get_cursor(win))
      local typed = ''
      if item.range then
        local sr, sc = bounds(item.range)
        if sr == row - 1 and sc and sc <= col then
          typed = api.nvim_buf_get_lines(bufnr, sr, sr + 1, true)[1]:sub(sc + 1, col)
        end
      end
      if text:sub(1, #typed) ~= typed then
        typed = ''
      end
      local rest = text:sub(#typed + 1)
      local take = require('copilot_ls.part')[kind](rest)
      local client = vim.lsp.get_client_by_id(item.client_id)
      if take == rest then
        apply(bufnr, item)
        if client then
          report.accepted(client, bufnr, lsp_item(item))
        end
        return
      end
      local lines = vim.split(take, '\n', { plain = true })
      api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col, lines)
      api.nvim_win_set_cursor(win, { row + #lines - 1, (#lines == 1 and col or 0) + #lines[#lines] })
      if client then
        report.partially_accepted(client, bufnr, lsp_item(item), take)
      end
    end,
  })
end

--- Dismiss the shown suggestion; false when none is shown. (get() with an on_accept that inserts nothing
--- hides it and hands us the item to report.)
function M.dismiss(bufnr)
  return vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)
      local client = vim.lsp.get_client_by_id(item.client_id)
      if client then
        report.rejected(client, bufnr, lsp_item(item))
      end
    end,
  })
end

function M.cycle(bufnr, delta)
  vim.lsp.inline_completion.select({ bufnr = bufnr, count = delta })
end

--- The number of suggestions when Neovim shows it (after cycling: " (2/3)"), else nil.
function M.count(bufnr)
  local ns = api.nvim_get_namespaces()[M.ns_name]
  if not ns or not M.visible(bufnr) then
    return ns and 0 or nil
  end
  for _, mark in ipairs(api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })) do
    local chunks = vim.deepcopy(mark[4].virt_text or {})
    for _, vl in ipairs(mark[4].virt_lines or {}) do
      vim.list_extend(chunks, vl)
    end
    for _, chunk in ipairs(chunks) do
      local n = chunk[2] == 'ComplHintMore' and chunk[1]:match('%(%d+/(%d+)%)')
      if n then
        return tonumber(n)
      end
    end
  end
  return nil
end

--- The text still to be inserted by the shown suggestion, read from Neovim's extmarks (tests, statuslines).
function M.current_text(bufnr)
  local ns = api.nvim_get_namespaces()[M.ns_name]
  if not ns then
    return nil
  end
  for _, mark in ipairs(api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })) do
    local d = mark[4]
    local lines = {}
    local first = {}
    for _, chunk in ipairs(d.virt_text or {}) do
      if chunk[2] ~= 'ComplHintMore' then
        first[#first + 1] = chunk[1]
      end
    end
    lines[1] = table.concat(first)
    for _, vl in ipairs(d.virt_lines or {}) do
      local parts = {}
      for _, chunk in ipairs(vl) do
        if chunk[2] ~= 'ComplHintMore' then
          parts[#parts + 1] = chunk[1]
        end
      end
      lines[#lines + 1] = table.concat(parts)
    end
    return table.concat(lines, '\n')
  end
  return nil
end

return M
