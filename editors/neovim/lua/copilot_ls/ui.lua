--- What the plugin shows besides ghost text: its highlight groups, and the server's messages.
---
--- Messages never stop the editor: each is one line cut to the room the command line has (v:echospace), so
--- Neovim never asks "Press ENTER"; a message repeated within REPEAT_MS (the server says "backend down" once
--- per outage, but settings changes and restarts can say it again) is shown once. The full text stays in the
--- LSP log (window/logMessage).
local api = vim.api
local M = {}

M.ghost_group = 'CopilotLsGhost'
M.hint_group = 'CopilotLsGhostHint'
M.REPEAT_MS = 5 * 60 * 1000

--- Does this (resolved) highlight show without 'termguicolors'? Terminal colour or a terminal attribute.
local function visible_in_terminal(hl)
  if hl.ctermfg or hl.ctermbg then
    return true
  end
  for _, attr in ipairs({ 'italic', 'bold', 'underline', 'reverse', 'standout' }) do
    if hl.cterm and hl.cterm[attr] then
      return true
    end
  end
  return false
end

--- The attributes of CopilotLsGhost for the `highlight` option: a group name links to it, a table is used as
--- it is; nil links to Comment when Comment shows in a terminal without truecolour, else grey (copilot.vim's).
function M.ghost_attrs(option)
  if type(option) == 'string' then
    return { link = option }
  elseif type(option) == 'table' then
    return vim.deepcopy(option)
  end
  if visible_in_terminal(api.nvim_get_hl(0, { name = 'Comment', link = false })) then
    return { link = 'Comment' }
  end
  return { fg = '#808080', ctermfg = 244 }
end

--- Define the groups (again after every :colorscheme, which clears them). With `native`, Neovim's own inline
--- completion (which draws with ComplHint) is pointed at CopilotLsGhost too.
function M.apply_highlights(option, native)
  local attrs = M.ghost_attrs(option)
  attrs.default = option == nil -- a `:highlight CopilotLsGhost` of the user's wins over our default
  api.nvim_set_hl(0, M.ghost_group, attrs)
  api.nvim_set_hl(0, M.hint_group, { link = 'MoreMsg', default = true })
  if native then
    api.nvim_set_hl(0, 'ComplHint', { link = M.ghost_group })
  end
end

function M.setup_highlights(option, native)
  M.apply_highlights(option, native)
  api.nvim_create_autocmd('ColorScheme', {
    group = api.nvim_create_augroup('copilot_ls.highlight', { clear = true }),
    callback = function()
      M.apply_highlights(option, native)
    end,
  })
end

--- `text` on one line and at most `width` display cells (cut with an ellipsis).
function M.one_line(text, width)
  text = vim.trim((text or ''):gsub('%s*[\r\n]+%s*', ' '))
  if vim.fn.strdisplaywidth(text) <= width then
    return text
  end
  local n = vim.fn.strchars(text)
  while n > 0 and vim.fn.strdisplaywidth(vim.fn.strcharpart(text, 0, n)) > width - 1 do
    n = n - 1
  end
  return vim.fn.strcharpart(text, 0, n) .. '…'
end

local shown = {} ---@type table<string, integer> message -> when it was last shown (ms)
local pending ---@type { text: string, level: integer }?

--- Show a message of the server: later in this event-loop turn (the last of a burst wins, so that two never
--- stack into a hit-enter prompt), one line, once per REPEAT_MS.
function M.message(text, level)
  text = M.one_line(text, 100000)
  local now = vim.uv.now()
  if shown[text] and now - shown[text] < M.REPEAT_MS then
    return
  end
  shown[text] = now
  local first = pending == nil
  pending = { text = text, level = level or vim.log.levels.INFO }
  if not first then
    return
  end
  vim.schedule(function()
    local msg = pending
    pending = nil
    if msg then
      -- v:echospace: the columns a message can use without scrolling (the ruler and showcmd take the rest).
      vim.notify(M.one_line(msg.text, math.max(vim.v.echospace, 20)), msg.level)
    end
  end)
end

local LEVELS = { vim.log.levels.ERROR, vim.log.levels.WARN, vim.log.levels.INFO, vim.log.levels.DEBUG }

--- window/showMessage of our client (replaces Neovim's handler, which prints the whole text).
function M.show_message_handler(_, params)
  if type(params) == 'table' and type(params.message) == 'string' then
    M.message(params.message, LEVELS[params.type] or vim.log.levels.INFO)
  end
end

--- Forget what was shown (tests).
function M.reset()
  shown, pending = {}, nil
end

return M
