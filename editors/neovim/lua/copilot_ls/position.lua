--- LSP positions <-> byte columns, for every position encoding, on every Neovim version.
--- Pure functions of a line's text: no buffer, no client.
local M = {}

--- Length in bytes of the UTF-8 sequence that starts with byte `b`.
local function seq_len(b)
  if b >= 0xF0 then
    return 4
  elseif b >= 0xE0 then
    return 3
  elseif b >= 0xC0 then
    return 2
  end
  return 1
end

--- How many code units of `encoding` a UTF-8 sequence of `n` bytes counts as.
local function units(n, encoding)
  if encoding == 'utf-8' then
    return n
  elseif encoding == 'utf-32' then
    return 1
  end
  return n == 4 and 2 or 1 -- utf-16: astral characters are surrogate pairs
end

--- Byte column (0-based) of the LSP `character` (code units of `encoding`) in `line`.
--- Past the end of the line it clamps to the line's length.
---@param line string
---@param character integer
---@param encoding string 'utf-8'|'utf-16'|'utf-32'
---@return integer
function M.to_byte(line, character, encoding)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local byte, seen = 0, 0
  while byte < #line and seen < character do
    local n = seq_len(line:byte(byte + 1))
    byte = byte + n
    seen = seen + units(n, encoding)
  end
  return math.min(byte, #line)
end

--- LSP character (code units of `encoding`) of the 0-based byte column `col` in `line`.
---@param line string
---@param col integer
---@param encoding string
---@return integer
function M.to_lsp(line, col, encoding)
  if encoding == 'utf-8' then
    return math.min(col, #line)
  end
  local byte, seen = 0, 0
  while byte < col and byte < #line do
    local n = seq_len(line:byte(byte + 1))
    byte = byte + n
    seen = seen + units(n, encoding)
  end
  return seen
end

return M
