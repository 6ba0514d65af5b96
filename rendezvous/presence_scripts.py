"""The Lua scripts that keep shared presence atomic in Redis (--redis), and its key names.

Each name has two keys, hash-tagged on the name so both sit in one Redis Cluster slot: its
owner (the identity key bound to it: `k`, first claimed `f`, last seen `l`, expiring as
rendezvous/name_store.py's bindings do) and its presence (the server holding its socket `s`,
its key `k`, when its ask began `t`, whom it asks for `w`, the call it may restart `c`, and the
PEER-READY a peer gets about it `i`), which lives as long as the registration. The call is
"PEER KEYHEX ROLE UFRAG": the peer and its key, 1 if this caller controls, and its ICE ufrag
in that call (a new run of the same identity makes a new one: no longer in that call).
Matching two asks reads the peer's presence too, in another slot: on one Redis (or a
replicated primary) that is one atomic step; docs/scaling.md says how a cluster would take it.
"""

from __future__ import annotations

PREFIX = "callpeer"


def owner_key(name: str) -> str:
    return f"{PREFIX}:{{{name}}}:owner"


def presence_key(name: str) -> str:
    return f"{PREFIX}:{{{name}}}:presence"


CHANNELS = f"{PREFIX}:server:"


def server_channel(server: str) -> str:
    """Where a server hears the halves of introductions other servers made for its callers."""
    return CHANNELS + server


# KEYS: 1 presence, 2 owner, 3 the asked peer's presence (the caller's own when it asks none)
# ARGV: 1 key, 2 server, 3 wall time, 4 wants, 5 call ("" keeps the record's), 6 intro,
#       7 ttl ms, 8 may claim,
#       9 probation s, 10 max age s, 11 settled after s, 12 touch interval s, 13 name,
#       14 the prefix of the servers' channels
REGISTER = """
local key, wall = ARGV[1], tonumber(ARGV[3])
local verdict = 'ok'
local owner = redis.call('HMGET', KEYS[2], 'k', 'f', 'l')
if owner[1] then
  if owner[1] ~= key then return {'owned'} end
  if wall - tonumber(owner[3]) >= tonumber(ARGV[12]) then
    local keep = tonumber(ARGV[10])
    if wall - tonumber(owner[2]) < tonumber(ARGV[11]) then
      keep = math.min(keep, tonumber(ARGV[9]))
    end
    redis.call('HSET', KEYS[2], 'l', ARGV[3])
    redis.call('EXPIRE', KEYS[2], math.ceil(keep))
  end
else
  if ARGV[8] ~= '1' then return {'quota'} end
  redis.call('HSET', KEYS[2], 'k', key, 'f', ARGV[3], 'l', ARGV[3])
  redis.call('EXPIRE', KEYS[2], math.ceil(math.min(tonumber(ARGV[10]), tonumber(ARGV[9]))))
  verdict = 'claimed'
end
local cur = redis.call('HMGET', KEYS[1], 'k', 't', 'w', 'c')
local since = ARGV[3]
if cur[1] == key and cur[2] and (ARGV[4] == '' or cur[3] == ARGV[4]) then since = cur[2] end
-- The call this key's record was in, for a caller that moved here from another server or
-- worker: its run (the ICE ufrag in it) says whether it is still that call.
local call = ARGV[5]
local before = ''
if cur[1] == key and cur[4] then before = cur[4] end
if call == '' then call = before end
redis.call('HSET', KEYS[1], 'k', key, 's', ARGV[2], 't', since, 'w', ARGV[4], 'c', call,
           'i', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if ARGV[4] == '' then return {verdict, since, before} end
local peer = redis.call('HMGET', KEYS[3], 's', 'k', 't', 'w', 'c', 'i')
if not peer[1] or not peer[6] or peer[6] == '' then return {verdict, since, before} end
local match = 'seen'
if peer[4] == ARGV[13] then
  local heard = 1
  if peer[1] ~= ARGV[2] then
    -- The peer's half, to its server now: both PEER-READYs leave at once. The one who asked
    -- first controls (ties: the asker). Format: rendezvous/shared_presence.py, handoff_bytes.
    local ctl = 0
    if tonumber(since) > tonumber(peer[3]) then ctl = 1 end
    local to = ARGV[4]
    heard = redis.call('PUBLISH', ARGV[14] .. peer[1], string.char(1, 0, ctl, #to) .. to ..
                       string.char(#peer[2]) .. peer[2] .. ARGV[6])
  end
  -- Nobody heard it: the peer's server is gone, and the peer will ask again from another.
  -- Both asks stay, to be matched then; one side alone introduced would wait for nothing.
  if heard > 0 then
    redis.call('HSET', KEYS[1], 'w', '')
    redis.call('HSET', KEYS[3], 'w', '')
    match = 'matched'
  else
    match = 'unheard'
  end
end
return {verdict, since, before, match, peer[1], peer[2], peer[3], peer[5], peer[6]}
"""

# KEYS: 1 presence; ARGV: 1 key, 2 server. Only the record this server wrote for that key goes.
LEAVE = """
local cur = redis.call('HMGET', KEYS[1], 'k', 's')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: the presence of each name refreshed; ARGV: 1 server, 2 ttl ms, then each name's key.
# Extends the records this server wrote for those keys; the positions (from 1) of the others.
TOUCH = """
local gone = {}
for i, name in ipairs(KEYS) do
  local cur = redis.call('HMGET', name, 'k', 's')
  if cur[1] == ARGV[i + 2] and cur[2] == ARGV[1] then
    redis.call('PEXPIRE', name, ARGV[2])
  else
    gone[#gone + 1] = i
  end
end
return gone
"""
