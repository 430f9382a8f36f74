--- copilot-ls for Neovim: ghost-text completions from a local model through the `copilot-ls` language server.
---
---   require('copilot_ls').setup({ settings = { backendUrl = 'http://127.0.0.1:8765' } })
---
--- Neovim 0.12+ (vim.lsp.inline_completion): Neovim's own inline completion, enabled for our server.
--- Neovim 0.10/0.11: our own ghost text (ghost.lua). Both get the same keys and bookkeeping.
local client_mod = require('copilot_ls.client')
local config = require('copilot_ls.config')

local api = vim.api
local M = {}

--- The resolved options and the path in use ('native' or 'ghost'); nil until setup().
M.config = nil
M.path = nil

local attached = {} ---@type table<integer, boolean>

local function impl()
  return require('copilot_ls.' .. M.path)
end

--- Empty Lua tables would go out as JSON arrays; the server wants objects.
local function json_object(t)
  if type(t) ~= 'table' or (vim.islist(t) and #t > 0) then
    return t
  end
  local out = vim.empty_dict()
  for k, v in pairs(t) do
    out[k] = json_object(v)
  end
  return out
end

--- Shape the user's settings for the server: initializationOptions carry them as they are; the
--- workspace/didChangeConfiguration and workspace/configuration payloads nest them under "copilot-ls".
local function with_settings(cfg)
  cfg.init_options = json_object(cfg.settings)
  cfg.lsp_settings = { ['copilot-ls'] = json_object(cfg.settings) }
  return cfg
end

local function feed(key)
  api.nvim_feedkeys(api.nvim_replace_termcodes(key, true, false, true), 'in', false)
end

local function map_keys(bufnr)
  local keys = M.config.keys
  local function map(name, fn, desc)
    if keys[name] then
      vim.keymap.set('i', keys[name], fn, { buffer = bufnr, desc = desc, silent = true })
    end
  end
  map('accept', function()
    if vim.fn.pumvisible() == 1 or not impl().accept(bufnr) then
      feed(keys.accept)
    end
  end, 'copilot-ls: accept the suggestion')
  map('accept_word', function()
    if not impl().accept_part(bufnr, 'word') then
      feed(keys.accept_word)
    end
  end, 'copilot-ls: accept the next word of the suggestion')
  map('accept_line', function()
    if not impl().accept_part(bufnr, 'line') then
      feed(keys.accept_line)
    end
  end, 'copilot-ls: accept the next line of the suggestion')
  map('dismiss', function()
    if not impl().dismiss(bufnr) then
      feed(keys.dismiss)
    end
  end, 'copilot-ls: dismiss the suggestion')
  map('next', function()
    impl().cycle(bufnr, 1)
  end, 'copilot-ls: next suggestion')
  map('prev', function()
    impl().cycle(bufnr, -1)
  end, 'copilot-ls: previous suggestion')
end

local function on_attach(bufnr)
  if attached[bufnr] then
    return
  end
  attached[bufnr] = true
  impl().attach(bufnr)
  if M.config.settings.enable == false then
    impl().enable(bufnr, false)
  end
  map_keys(bufnr)
end

--- Follow the `enable` setting in every attached buffer.
local function apply_enable()
  local on = M.config.settings.enable ~= false
  for bufnr in pairs(attached) do
    impl().enable(bufnr, on)
  end
end

local function on_detach(bufnr)
  if not attached[bufnr] then
    return
  end
  attached[bufnr] = nil
  impl().detach(bufnr)
  for _, key in pairs(M.config.keys) do
    if key then
      pcall(vim.keymap.del, 'i', key, { buffer = bufnr })
    end
  end
end

--- Configure and start. Options: see config.lua (cmd, filetypes, root_markers, settings, mode, debounce_ms,
--- highlight, keys). Calling it again sends the new settings to the running server; the other options keep
--- the values of the first call until Neovim restarts.
function M.setup(opts)
  local cfg = with_settings(config.resolve(opts))
  local path = config.path(cfg.mode)
  if M.config then
    M.config.settings = cfg.settings
    with_settings(M.config)
    client_mod.update_settings(M.config)
    apply_enable()
    return
  end
  M.config, M.path = cfg, path
  require('copilot_ls.ghost').debounce_ms = cfg.debounce_ms
  require('copilot_ls.ui').setup_highlights(cfg.highlight, path == 'native')

  local group = api.nvim_create_augroup('copilot_ls', { clear = true })
  for event, handler in pairs({ LspAttach = on_attach, LspDetach = on_detach }) do
    api.nvim_create_autocmd(event, {
      group = group,
      callback = function(args)
        local client = vim.lsp.get_client_by_id(args.data.client_id)
        if client and client.name == client_mod.name then
          handler(args.buf)
        end
      end,
    })
  end
  client_mod.start(cfg)
end

--- Replace some settings (merged into the current ones) and send them to the running server.
function M.set_settings(settings)
  if not M.config then
    error('copilot_ls: call setup() first', 0)
  end
  M.config.settings = vim.tbl_deep_extend('force', M.config.settings, settings or {})
  with_settings(M.config)
  client_mod.update_settings(M.config)
  apply_enable()
end

--- Accept / dismiss / cycle the suggestion of the current buffer (what the keys do). accept and dismiss
--- return false when nothing is shown.
function M.accept()
  return M.path ~= nil and impl().accept(api.nvim_get_current_buf())
end

--- Accept the next word ('word') or line ('line') of the suggestion; false when nothing is shown.
function M.accept_part(kind)
  return M.path ~= nil and impl().accept_part(api.nvim_get_current_buf(), kind)
end

function M.dismiss()
  return M.path ~= nil and impl().dismiss(api.nvim_get_current_buf())
end

function M.cycle(delta)
  if M.path then
    impl().cycle(api.nvim_get_current_buf(), delta or 1)
  end
end

--- Whether a suggestion is shown in `bufnr` (default: current), and its text still to be inserted.
function M.visible(bufnr)
  return M.path ~= nil and impl().visible(bufnr or api.nvim_get_current_buf())
end

--- How many suggestions can be cycled through (nil when unknown: Neovim's own inline completion keeps that
--- to itself until you cycle).
function M.count(bufnr)
  return M.path ~= nil and impl().count(bufnr or api.nvim_get_current_buf()) or nil
end

function M.current_text(bufnr)
  return M.path ~= nil and impl().current_text(bufnr or api.nvim_get_current_buf()) or nil
end

--- Stop the server (and wait for it to exit, at most `timeout_ms`).
function M.stop(timeout_ms)
  client_mod.stop(timeout_ms)
end

return M
