-- One rate-limit decision, atomically, on the Redis server's own clock.
-- A transcription of gateway/policies/ratelimit/arithmetic.py: read every state, decide
-- every limit, and write the new states (with their expiry) only if all admit.
--
-- KEYS[i]   the state of limit i (all in one hash slot: {rl:<subject>}...)
-- ARGV[1]   cost
-- ARGV[2+4(i-1) ..] per limit: kind (1 rate, 2 quota), amount, burst, period
-- returns   {admitted, then per limit: admitted, remaining, reset_us, retry_us}
-- 1e-6: the same slack on time comparisons as arithmetic.py (float resolution).
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local cost = tonumber(ARGV[1])
local n = #KEYS
local results = {}
local writes = {}
local all = 1
for i = 1, n do
  local base = 2 + (i - 1) * 4
  local kind = tonumber(ARGV[base])
  local amount = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local period = tonumber(ARGV[base + 3])
  local raw = redis.call('GET', KEYS[i])
  if kind == 1 then
    local interval = 1 / amount
    local tat = tonumber(raw)
    if tat == nil or tat < now then tat = now end
    local new_tat = tat + cost * interval
    local allow_at = new_tat - burst * interval
    if now < allow_at - 1e-6 then
      local remaining = math.max(0, math.floor((now - (tat - burst * interval)) / interval + 1e-6))
      all = 0
      results[i] = {0, remaining, tat - now, allow_at - now}
    else
      local remaining = math.max(0, math.floor((now - allow_at) / interval + 1e-6))
      results[i] = {1, remaining, new_tat - now, 0}
      writes[i] = {string.format('%.6f', new_tat), math.ceil((new_tat - now) * 1000) + 1}
    end
  else
    local window = math.floor(now / period)
    local used = 0
    if raw then
      local sep = string.find(raw, ':', 1, true)
      if tonumber(string.sub(raw, 1, sep - 1)) == window then
        used = tonumber(string.sub(raw, sep + 1))
      end
    end
    local reset = (window + 1) * period - now
    if used + cost > amount then
      all = 0
      results[i] = {0, math.max(0, amount - used), reset, reset}
    else
      results[i] = {1, amount - used - cost, reset, 0}
      writes[i] = {window .. ':' .. (used + cost), math.ceil(reset * 1000) + 1}
    end
  end
end
if all == 1 then
  for i = 1, n do
    redis.call('SET', KEYS[i], writes[i][1], 'PX', writes[i][2])
  end
end
local out = {all}
for i = 1, n do
  local r = results[i]
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = math.floor(r[3] * 1000000)
  out[#out + 1] = math.floor(r[4] * 1000000)
end
return out
