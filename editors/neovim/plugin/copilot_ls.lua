-- copilot-ls: nothing starts until require('copilot_ls').setup() is called. This file only adds :CopilotLs.
if vim.g.loaded_copilot_ls then
  return
end
vim.g.loaded_copilot_ls = true

local subcommands = {
  status = function()
    vim.cmd('checkhealth copilot_ls')
  end,
  accept = function()
    require('copilot_ls').accept()
  end,
  dismiss = function()
    require('copilot_ls').dismiss()
  end,
  next = function()
    require('copilot_ls').cycle(1)
  end,
  prev = function()
    require('copilot_ls').cycle(-1)
  end,
  toggle = function()
    local plugin = require('copilot_ls')
    if not plugin.config then
      vim.notify('copilot-ls: call require("copilot_ls").setup() first', vim.log.levels.WARN)
      return
    end
    local on = plugin.config.settings.enable ~= false
    plugin.set_settings({ enable = not on })
    vim.notify('copilot-ls: suggestions ' .. (on and 'off' or 'on'))
  end,
  stop = function()
    require('copilot_ls').stop()
  end,
}

vim.api.nvim_create_user_command('CopilotLs', function(args)
  local fn = subcommands[args.args ~= '' and args.args or 'status']
  if not fn then
    vim.notify('copilot-ls: unknown subcommand ' .. args.args, vim.log.levels.ERROR)
    return
  end
  fn()
end, {
  nargs = '?',
  complete = function()
    return vim.tbl_keys(subcommands)
  end,
  desc = 'copilot-ls: status (default), toggle, accept, dismiss, next, prev, stop',
})
