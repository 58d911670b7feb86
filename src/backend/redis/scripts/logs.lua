-- Reads exact windows' logs as they stand, for the client to hold a server's count against them.
-- KEYS[1] the state hash, KEYS[1 + i] window i's log; ARGV[i] window i's id.
-- Returns per window {seq, entries}: the sequence number of its oldest entry (what numbers the
-- entries, see acquire.lua's receipts) and its entries, "at:cost", oldest first.
return function(KEYS, ARGV)
  local logs = {}
  for i = 1, #ARGV do
    local w = {}
    read_log(w, call('HGET', KEYS[1], ARGV[i]), 0)
    logs[i] = {w.seq, call('LRANGE', KEYS[1 + i], 0, -1)}
  end
  return logs
end
