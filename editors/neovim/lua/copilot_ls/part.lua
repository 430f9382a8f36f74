--- Which part of a suggestion a partial accept takes. Pure.
local M = {}

--- The next word of `rest` (with the blanks and line breaks before it), or its next run of punctuation.
function M.word(rest)
  return rest:match('^%s*[%w_]+') or rest:match('^%s*[^%w_%s]+') or rest
end

--- The rest of the current line of `rest`; at a line break, the break and the whole next line.
function M.line(rest)
  if rest:sub(1, 1) == '\n' then
    return '\n' .. (rest:sub(2):match('^[^\n]*'))
  end
  return rest:match('^[^\n]*')
end

return M
