--- Options of `require('copilot_ls').setup()`: defaults, merging and validation.
local M = {}

M.defaults = {
  -- How to start the language server (stdio). A list, as for vim.lsp.start().
  cmd = { 'copilot-ls' },
  -- Filetypes to attach to; nil means every buffer that is a real file.
  filetypes = nil,
  -- Files or folders that mark the project root (the server's workspace folder).
  root_markers = { '.git', 'pyproject.toml', 'setup.py', 'package.json', 'go.mod', 'Cargo.toml', 'pom.xml' },
  -- Server settings, the same names as the VS Code extension's (backendUrl, model, apiKey, debounceMs,
  -- maxLines, minConfidence, explicitCandidates, languages = { python = true, ... }). Sent as initializationOptions and with
  -- workspace/didChangeConfiguration; change them at run time with require('copilot_ls').set_settings().
  settings = {},
  -- Which ghost-text machinery to use: 'auto' (Neovim's vim.lsp.inline_completion when it exists, else our
  -- own), 'native' or 'ghost'.
  mode = 'auto',
  -- Own ghost text (Neovim 0.10/0.11): milliseconds after the last change before asking the server.
  debounce_ms = 30,
  -- How ghost text looks (the CopilotLsGhost group; Neovim's own inline completion is pointed at it too):
  -- a group name to link to ('Comment'), or nvim_set_hl() attributes ({ fg = '#808080', ctermfg = 244 }).
  -- nil: Comment when it has a terminal colour, else grey that shows without 'termguicolors'; a
  -- `:highlight CopilotLsGhost` of your own wins over this default.
  highlight = nil,
  -- Insert-mode keys; set one to false to leave that key alone.
  keys = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-Down>',
    next = '<M-]>',
    prev = '<M-[>',
    dismiss = '<C-]>',
  },
}

local KNOWN = {}
for k in pairs(M.defaults) do
  KNOWN[k] = true
end
KNOWN.filetypes, KNOWN.highlight = true, true -- options whose default is nil (absent from the table above)

local function is_list_of_strings(v)
  if type(v) ~= 'table' or not vim.islist(v) or #v == 0 then
    return false
  end
  for _, s in ipairs(v) do
    if type(s) ~= 'string' then
      return false
    end
  end
  return true
end

--- Merge user options over the defaults and validate them; errors name the bad option.
---@param opts table|nil
---@return table
function M.resolve(opts)
  opts = opts or {}
  if type(opts) ~= 'table' then
    error('copilot_ls.setup: expected a table of options, got ' .. type(opts), 0)
  end
  for k in pairs(opts) do
    if not KNOWN[k] then
      error(('copilot_ls.setup: unknown option %q'):format(tostring(k)), 0)
    end
  end
  local cfg = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  if opts.cmd then
    cfg.cmd = opts.cmd -- lists replace, never merge
  end
  if opts.root_markers then
    cfg.root_markers = opts.root_markers
  end
  local checks = {
    { 'cmd', is_list_of_strings(cfg.cmd), 'a non-empty list of strings, e.g. { "copilot-ls" }' },
    { 'filetypes', cfg.filetypes == nil or is_list_of_strings(cfg.filetypes), 'nil or a list of filetypes' },
    { 'root_markers', is_list_of_strings(cfg.root_markers), 'a list of file names' },
    { 'settings', type(cfg.settings) == 'table', 'a table' },
    { 'mode', cfg.mode == 'auto' or cfg.mode == 'native' or cfg.mode == 'ghost', "'auto', 'native' or 'ghost'" },
    { 'debounce_ms', type(cfg.debounce_ms) == 'number' and cfg.debounce_ms >= 0, 'a number >= 0' },
    { 'keys', type(cfg.keys) == 'table', 'a table' },
    {
      'highlight',
      cfg.highlight == nil or (type(cfg.highlight) == 'string' and cfg.highlight ~= '') or type(cfg.highlight) == 'table',
      "nil, a highlight group name (e.g. 'Comment') or a table of nvim_set_hl() attributes",
    },
  }
  for _, c in ipairs(checks) do
    if not c[2] then
      error(('copilot_ls.setup: option %q must be %s'):format(c[1], c[3]), 0)
    end
  end
  for name, key in pairs(cfg.keys) do
    if M.defaults.keys[name] == nil then
      error(('copilot_ls.setup: unknown key %q in keys'):format(name), 0)
    end
    if key ~= false and type(key) ~= 'string' then
      error(('copilot_ls.setup: keys.%s must be a key string or false'):format(name), 0)
    end
  end
  return cfg
end

--- Which path this Neovim takes: 'native' (vim.lsp.inline_completion) or 'ghost' (our own).
---@param mode string
---@return string
function M.path(mode)
  local native = vim.lsp.inline_completion ~= nil
  if mode == 'native' and not native then
    error('copilot_ls.setup: mode = "native" needs a Neovim with vim.lsp.inline_completion (0.12+)', 0)
  end
  if mode == 'auto' then
    return native and 'native' or 'ghost'
  end
  return mode
end

return M
