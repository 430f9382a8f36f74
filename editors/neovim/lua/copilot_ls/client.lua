--- Starting `copilot-ls` and talking to it, on Neovim 0.10, 0.11 and 0.12.
local M = {}

M.name = 'copilot_ls'

local has_011 = vim.fn.has('nvim-0.11') == 1

--- client:request() on 0.11+, client.request() on 0.10.
function M.request(client, method, params, handler, bufnr)
  if has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.notify(client, method, params)
  if has_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel_request(client, id)
  if has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

--- Our client attached to `bufnr`, if any.
function M.get(bufnr)
  return vim.lsp.get_clients({ name = M.name, bufnr = bufnr })[1]
end

--- The project root of `bufnr`: the nearest folder with a root marker, else the file's folder.
function M.root_dir(bufnr, markers)
  local root = vim.fs.root(bufnr, markers)
  if root then
    return root
  end
  local file = vim.api.nvim_buf_get_name(bufnr)
  return file ~= '' and vim.fs.dirname(file) or vim.fn.getcwd()
end

local function applies(bufnr, cfg)
  if vim.bo[bufnr].buftype ~= '' or vim.api.nvim_buf_get_name(bufnr) == '' then
    return false
  end
  return cfg.filetypes == nil or vim.tbl_contains(cfg.filetypes, vim.bo[bufnr].filetype)
end

local function lsp_config(cfg)
  return {
    name = M.name,
    cmd = cfg.cmd,
    filetypes = cfg.filetypes,
    init_options = cfg.init_options,
    settings = cfg.lsp_settings,
    -- The server's messages as one short line each (Neovim's own handler prints the whole text, which in a
    -- narrow window stops the editor with "Press ENTER").
    handlers = { ['window/showMessage'] = require('copilot_ls.ui').show_message_handler },
  }
end

--- Start the server for every matching buffer, now and later: vim.lsp.config + vim.lsp.enable on 0.11+,
--- a FileType autocommand + vim.lsp.start on 0.10.
function M.start(cfg)
  local base = lsp_config(cfg)
  if vim.lsp.config and vim.lsp.enable then
    base.root_dir = function(bufnr, on_dir)
      if applies(bufnr, cfg) then
        on_dir(M.root_dir(bufnr, cfg.root_markers))
      end
    end
    vim.lsp.config(M.name, base)
    vim.lsp.enable(M.name)
    return
  end
  local group = vim.api.nvim_create_augroup('copilot_ls.start', { clear = true })
  local function start(bufnr)
    if applies(bufnr, cfg) then
      local c = vim.deepcopy(base)
      c.root_dir = M.root_dir(bufnr, cfg.root_markers)
      vim.lsp.start(c, { bufnr = bufnr })
    end
  end
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    callback = function(args)
      start(args.buf)
    end,
  })
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.bo[bufnr].filetype ~= '' then
      start(bufnr)
    end
  end
end

--- Send new settings to running clients (workspace/didChangeConfiguration) and to clients started later.
function M.update_settings(cfg)
  if vim.lsp.config then
    vim.lsp.config(M.name, { init_options = cfg.init_options, settings = cfg.lsp_settings })
  end
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    client.settings = cfg.lsp_settings
    M.notify(client, 'workspace/didChangeConfiguration', { settings = cfg.lsp_settings })
  end
end

--- Stop our clients and wait (up to `timeout_ms`) until they are gone.
function M.stop(timeout_ms)
  local clients = vim.lsp.get_clients({ name = M.name })
  for _, client in ipairs(clients) do
    if has_011 then
      client:stop()
    else
      client.stop()
    end
  end
  vim.wait(timeout_ms or 2000, function()
    return #vim.lsp.get_clients({ name = M.name }) == 0
  end, 20)
end

return M
