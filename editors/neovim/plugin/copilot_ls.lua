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
  desc = 'copilot-ls: status (default), accept, dismiss, next, prev, stop',
})
