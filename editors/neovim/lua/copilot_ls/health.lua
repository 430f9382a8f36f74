--- :checkhealth copilot_ls -- does the server start, does the backend answer, which path is in use.
local config = require('copilot_ls.config')

local M = {}

-- What copilot-ls uses when the settings name no backend (keep in step with copilot_ls/lsp/settings.py).
M.default_backend_url = 'http://127.0.0.1:8765'

--- Pull complete JSON-RPC messages out of `buf`; returns them and the rest of the buffer.
local function split_messages(buf)
  local out = {}
  while true do
    local header_end = buf:find('\r\n\r\n', 1, true)
    if not header_end then
      break
    end
    local len = tonumber(buf:sub(1, header_end):match('[Cc]ontent%-[Ll]ength:%s*(%d+)'))
    if not len or #buf < header_end + 3 + len then
      break
    end
    local ok, msg = pcall(vim.json.decode, buf:sub(header_end + 4, header_end + 3 + len))
    if ok then
      out[#out + 1] = msg
    end
    buf = buf:sub(header_end + 4 + len)
  end
  return out, buf
end

--- Start `cmd`, send initialize and wait for its answer. Returns the InitializeResult, or nil and a reason.
function M.handshake(cmd, init_options, timeout_ms)
  local buf, stderr = '', ''
  local ok, proc = pcall(vim.system, cmd, {
    stdin = true,
    stdout = function(_, data)
      buf = buf .. (data or '')
    end,
    stderr = function(_, data)
      stderr = (stderr .. (data or '')):sub(-2000)
    end,
  })
  if not ok then
    return nil, tostring(proc)
  end
  local function send(msg)
    local body = vim.json.encode(msg)
    proc:write(('Content-Length: %d\r\n\r\n%s'):format(#body, body))
  end
  send({
    jsonrpc = '2.0',
    id = 1,
    method = 'initialize',
    params = {
      processId = vim.uv.os_getpid(),
      rootUri = vim.NIL,
      capabilities = vim.empty_dict(),
      initializationOptions = next(init_options or {}) and init_options or vim.empty_dict(),
    },
  })
  local result, err
  local exited = false
  vim.wait(timeout_ms, function()
    local msgs
    msgs, buf = split_messages(buf)
    for _, msg in ipairs(msgs) do
      if msg.id == 1 then
        result, err = msg.result, msg.error and vim.inspect(msg.error)
        return true
      end
    end
    exited = proc:is_closing() or false
    return exited
  end, 50)
  if not exited then
    pcall(send, { jsonrpc = '2.0', id = 2, method = 'shutdown' })
    pcall(send, { jsonrpc = '2.0', method = 'exit' })
    pcall(function()
      proc:write(nil)
    end)
    if not pcall(proc.wait, proc, 3000) then
      proc:kill(15)
    end
  end
  if result then
    return result
  end
  local why = err or (exited and 'it exited' or ('no answer to initialize within %d ms'):format(timeout_ms))
  stderr = vim.trim(stderr)
  return nil, stderr ~= '' and (why .. '; its stderr ends with:\n' .. stderr) or why
end

--- GET `url` (http only) and return the status code, or nil and a reason.
function M.http_status(url, timeout_ms)
  local host, port, path = url:match('^http://([^/:]+):?(%d*)(.*)$')
  if not host then
    return nil, 'only http:// URLs can be checked from here: ' .. url
  end
  local addrs = vim.uv.getaddrinfo(host, nil, { socktype = 'stream' })
  if not addrs or not addrs[1] then
    return nil, 'cannot resolve ' .. host
  end
  local tcp = vim.uv.new_tcp()
  local data, status, err, done = '', nil, nil, false
  tcp:connect(addrs[1].addr, tonumber(port) or 80, function(cerr)
    if cerr then
      err, done = cerr, true
      return
    end
    tcp:write(('GET %s HTTP/1.0\r\nHost: %s\r\n\r\n'):format(path ~= '' and path or '/', host))
    tcp:read_start(function(rerr, chunk)
      if rerr then
        err, done = rerr, true
      elseif chunk then
        data = data .. chunk
        status = tonumber(data:match('^HTTP/%d%.?%d? (%d%d%d)'))
        done = status ~= nil
      else
        done = true
      end
    end)
  end)
  vim.wait(timeout_ms, function()
    return done
  end, 20)
  if not tcp:is_closing() then
    tcp:close()
  end
  if status then
    return status
  end
  return nil, err or (done and 'the connection closed without an answer' or 'no answer within ' .. timeout_ms .. ' ms')
end

--- The OpenAI-compatible models URL of a backend base URL ("http://h:p" or "http://h:p/v1").
function M.models_url(base)
  base = base:gsub('/+$', '')
  if base:match('/v1$') then
    return base .. '/models'
  end
  return base .. '/v1/models'
end

--- The command that starts our backend where `base` points: `copilot-backend serve --model default`, with
--- --port (and --host) when the URL is not the default 127.0.0.1:8765. nil for a URL it cannot serve (https,
--- a path other than /v1).
function M.serve_command(base)
  local scheme, host, port, path = (base or ''):match('^(https?)://([^/:]+):?(%d*)(.*)$')
  if scheme ~= 'http' or not (path == '' or path:match('^/v1/*$') or path:match('^/+$')) then
    return nil
  end
  local cmd = 'copilot-backend serve --model default'
  if host ~= '127.0.0.1' and host ~= 'localhost' then
    cmd = cmd .. ' --host ' .. host
  end
  port = tonumber(port) or 80
  if port ~= 8765 then
    cmd = cmd .. ' --port ' .. port
  end
  return cmd
end

function M.check()
  local health = vim.health
  local plugin = require('copilot_ls')
  health.start('copilot-ls: Neovim')
  local cfg = plugin.config
  if not cfg then
    health.warn("require('copilot_ls').setup() has not been called: nothing starts", {
      "Add require('copilot_ls').setup({}) to your config (see the plugin's README).",
    })
    cfg = config.resolve({})
  end
  local path = plugin.path or config.path(cfg.mode)
  local version = tostring(vim.version())
  if path == 'native' then
    health.ok(("Neovim %s: using Neovim's own inline completion (vim.lsp.inline_completion)"):format(version))
  else
    health.ok(
      ('Neovim %s: using copilot-ls ghost text (%s)'):format(
        version,
        vim.lsp.inline_completion and 'mode = "ghost"' or 'this Neovim has no vim.lsp.inline_completion'
      )
    )
  end

  health.start('copilot-ls: language server')
  local cmd = cfg.cmd
  if vim.fn.executable(cmd[1]) ~= 1 then
    health.error(('server command not found: %s'):format(cmd[1]), {
      'Install copilot-ls (pip install copilot-ls) or set cmd = { "/path/to/copilot-ls" } in setup().',
    })
  else
    local result, why = M.handshake(cmd, cfg.settings, 20000)
    if result then
      local caps = result.capabilities or {}
      local info = result.serverInfo or {}
      local line = ('`%s` starts and answers initialize (%s %s)'):format(
        table.concat(cmd, ' '),
        info.name or '?',
        info.version or ''
      )
      if caps.inlineCompletionProvider then
        health.ok(line .. '; it offers inline completion')
      else
        health.error(line .. ', but it offers no inline completion')
      end
    else
      health.error(('`%s` does not start: %s'):format(table.concat(cmd, ' '), why))
    end
  end
  local running = vim.lsp.get_clients({ name = require('copilot_ls.client').name })
  if #running > 0 then
    for _, c in ipairs(running) do
      health.info(('client %d running, root %s'):format(c.id, c.root_dir or '(none)'))
    end
  else
    health.info('no copilot-ls client is running yet (one starts when you open a file)')
  end

  health.start('copilot-ls: model backend')
  local base = cfg.settings.backendUrl or M.default_backend_url
  local url = M.models_url(base)
  local status, why = M.http_status(url, 5000)
  if status and status < 400 then
    health.ok(('the backend answers at %s (GET %s -> %d)'):format(base, url, status))
  elseif status then
    health.error(('the backend at %s answers GET %s with HTTP %d'):format(base, url, status))
  elseif cfg.settings.backendUrl then
    local serve = M.serve_command(base)
    health.error(('the backend does not answer at %s: %s'):format(base, why), {
      serve and ('Start it: ' .. serve) or ('Start the server that %s names, or set settings.backendUrl'):format(base),
    })
  else
    health.warn(('no backend answers at the default %s (%s)'):format(base, why), {
      'copilot-ls starts one itself when a completion is first asked for; or run: copilot-backend serve',
    })
  end
end

return M
