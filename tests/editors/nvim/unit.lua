-- Unit tests of the plugin's pure parts, run with `nvim -l tests/editors/nvim/unit.lua PLUGIN_DIR`
-- (by test_neovim_e2e.py). Prints "ok N" and exits 0, or prints the failures and exits 1.
vim.opt.runtimepath:prepend(arg[1])
local position = require('copilot_ls.position')
local config = require('copilot_ls.config')
local health = require('copilot_ls.health')

local failures, count = {}, 0
local function eq(got, want, what)
  count = count + 1
  if not vim.deep_equal(got, want) then
    table.insert(failures, ('%s: got %s, want %s'):format(what, vim.inspect(got), vim.inspect(want)))
  end
end
local function fails(fn, pattern, what)
  count = count + 1
  local ok, err = pcall(fn)
  if ok or not tostring(err):find(pattern, 1, true) then
    table.insert(failures, ('%s: expected an error with %q, got %s'):format(what, pattern, tostring(err)))
  end
end

-- "aé😀b": a (1 byte), é (2 bytes, 1 utf-16 unit), 😀 (4 bytes, 2 utf-16 units, 1 utf-32), b
local line = 'a\195\169\240\159\152\128b'
eq(#line, 8, 'byte length')
for _, case in ipairs({
  -- { character, encoding, byte }
  { 0, 'utf-16', 0 }, { 1, 'utf-16', 1 }, { 2, 'utf-16', 3 }, { 4, 'utf-16', 7 }, { 5, 'utf-16', 8 },
  { 0, 'utf-32', 0 }, { 2, 'utf-32', 3 }, { 3, 'utf-32', 7 }, { 4, 'utf-32', 8 },
  { 3, 'utf-8', 3 }, { 7, 'utf-8', 7 },
}) do
  eq(position.to_byte(line, case[1], case[2]), case[3], ('to_byte(%d, %s)'):format(case[1], case[2]))
  eq(position.to_lsp(line, case[3], case[2]), case[1], ('to_lsp(%d, %s)'):format(case[3], case[2]))
end
eq(position.to_byte(line, 99, 'utf-16'), 8, 'past the end clamps (utf-16)')
eq(position.to_byte(line, 99, 'utf-8'), 8, 'past the end clamps (utf-8)')
eq(position.to_byte('', 3, 'utf-32'), 0, 'empty line')
-- CJK: 3 bytes, one unit in utf-16 and utf-32
eq(position.to_byte('\228\184\173x', 1, 'utf-16'), 3, 'CJK utf-16')

-- partial accepts
local part = require('copilot_ls.part')
eq(part.word('"abcd", "x")'), '"', 'word: punctuation run')
eq(part.word('abcd", "x")'), 'abcd', 'word: a word')
eq(part.word(', "x")'), ',', 'word: a comma')
eq(part.word(' == 1'), ' ==', 'word: blanks then punctuation')
eq(part.word('\n    return x'), '\n    return', 'word: across the line break')
eq(part.line('a = 1\nb = 2'), 'a = 1', 'line: to the end of the line')
eq(part.line('\nb = 2\nc'), '\nb = 2', 'line: at a break, the next line')
eq(part.line('x'), 'x', 'line: the last line')

-- options
local cfg = config.resolve({ settings = { backendUrl = 'http://127.0.0.1:1' }, keys = { dismiss = false } })
eq(cfg.cmd, { 'copilot-ls' }, 'default cmd')
eq(cfg.keys.accept, '<Tab>', 'default accept key kept')
eq(cfg.keys.dismiss, false, 'a key can be turned off')
eq(config.resolve({ cmd = { 'x', '--stdio' } }).cmd, { 'x', '--stdio' }, 'cmd replaces the default list')
fails(function() config.resolve({ bogus = 1 }) end, 'unknown option "bogus"', 'unknown option')
fails(function() config.resolve({ cmd = 'copilot-ls' }) end, 'option "cmd" must be', 'cmd as a string')
fails(function() config.resolve({ mode = 'fast' }) end, 'option "mode" must be', 'bad mode')
fails(function() config.resolve({ debounce_ms = -1 }) end, 'option "debounce_ms"', 'negative debounce')
fails(function() config.resolve({ keys = { accept = 1 } }) end, 'keys.accept must be', 'bad key')
fails(function() config.resolve({ keys = { accpet = '<Tab>' } }) end, 'unknown key "accpet"', 'misspelt key')
eq(config.path('ghost'), 'ghost', 'forced ghost path')
eq(config.path('auto'), vim.lsp.inline_completion and 'native' or 'ghost', 'auto path')
if not vim.lsp.inline_completion then
  fails(function() config.path('native') end, 'needs a Neovim with vim.lsp.inline_completion', 'native on 0.11')
end

-- health helpers
eq(health.models_url('http://127.0.0.1:8765'), 'http://127.0.0.1:8765/v1/models', 'models url')
eq(health.models_url('http://h:1/v1/'), 'http://h:1/v1/models', 'models url of a /v1 base')
-- :checkhealth's hint starts the backend where the settings point (issue 16: it named the default port)
eq(health.serve_command('http://127.0.0.1:8765'), 'copilot-backend serve --model default', 'serve: default URL')
eq(health.serve_command('http://127.0.0.1:9123'), 'copilot-backend serve --model default --port 9123', 'serve: port')
eq(health.serve_command('http://localhost:9123/v1'), 'copilot-backend serve --model default --port 9123',
  'serve: localhost with /v1')
eq(health.serve_command('http://10.0.0.5:8765'), 'copilot-backend serve --model default --host 10.0.0.5',
  'serve: another host')
eq(health.serve_command('https://api.example.com/v1'), nil, 'serve: not for https')

-- options: filetypes and highlight (their defaults are nil) are known options
eq(config.resolve({ filetypes = { 'python' } }).filetypes, { 'python' }, 'filetypes option')
eq(config.resolve({ highlight = 'Comment' }).highlight, 'Comment', 'highlight: a group')
eq(config.resolve({ highlight = { ctermfg = 8 } }).highlight, { ctermfg = 8 }, 'highlight: attributes')
fails(function() config.resolve({ highlight = 3 }) end, 'option "highlight" must be', 'bad highlight')

-- messages: one line, cut to the room there is; ghost highlight shows without truecolour
local ui = require('copilot_ls.ui')
eq(ui.one_line('a\nb  \n c', 80), 'a b c', 'one line')
local long = 'copilot-ls: no completions: cannot reach the backend at http://127.0.0.1:9 (ConnectError: '
  .. 'All connection attempts failed). Retrying in the background.'
local cut = ui.one_line(long, 60)
eq({ vim.fn.strdisplaywidth(cut), vim.endswith(cut, '…'), vim.startswith(long, cut:sub(1, -4)) }, { 60, true, true },
  'cut to the width with an ellipsis')
eq(ui.one_line('日本語テキスト', 7), '日本語…', 'cut by display cells')
vim.o.termguicolors = false
vim.api.nvim_set_hl(0, 'Comment', { fg = '#9ca0a4' }) -- Neovim's default: no terminal colour
eq(ui.ghost_attrs(nil), { fg = '#808080', ctermfg = 244 }, 'grey when Comment has no terminal colour')
vim.api.nvim_set_hl(0, 'Comment', { fg = '#9ca0a4', ctermfg = 8 })
eq(ui.ghost_attrs(nil), { link = 'Comment' }, 'Comment when it has one')
eq(ui.ghost_attrs('Conceal'), { link = 'Conceal' }, 'a configured group')
ui.apply_highlights({ ctermfg = 3, italic = true }, true)
eq(vim.api.nvim_get_hl(0, { name = 'ComplHint', link = false }).ctermfg, 3, 'native ComplHint follows the option')

local status, why = health.http_status('https://example.invalid', 100)
eq({ status, why and why:match('only http://') ~= nil }, { nil, true }, 'https is not probed')

-- setup(): settings go out as JSON objects; a second call or set_settings() changes settings only
local plugin = require('copilot_ls')
plugin.setup({ cmd = { 'copilot-ls-test' }, settings = {} })
eq(vim.json.encode(plugin.config.init_options), '{}', 'empty settings are a JSON object')
eq(plugin.path, vim.lsp.inline_completion and 'native' or 'ghost', 'path chosen at setup')
plugin.setup({ cmd = { 'other' }, settings = { backendUrl = 'http://127.0.0.1:9', languages = {} } })
eq(plugin.config.cmd, { 'copilot-ls-test' }, 'a second setup keeps the first cmd')
eq(plugin.config.init_options.backendUrl, 'http://127.0.0.1:9', 'a second setup replaces the settings')
eq(vim.json.encode(plugin.config.lsp_settings['copilot-ls'].languages), '{}', 'nested empty table is an object')
plugin.set_settings({ maxLines = 3 })
eq({ plugin.config.init_options.backendUrl, plugin.config.init_options.maxLines }, { 'http://127.0.0.1:9', 3 },
  'set_settings merges')
eq(plugin.visible(), false, 'nothing shown without a server')
eq(plugin.accept(), false, 'accept with nothing shown')
eq(plugin.dismiss(), false, 'dismiss with nothing shown')

if #failures > 0 then
  io.stdout:write(table.concat(failures, '\n') .. '\n')
  os.exit(1)
end
io.stdout:write(('ok %d\n'):format(count))
os.exit(0)
