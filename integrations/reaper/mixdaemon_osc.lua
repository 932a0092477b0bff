-- OSC 1.0 messages for the mixdaemon ReaScripts: encoding, decoding, and a UDP client on LuaSocket.
-- Pure Lua 5.3+ (string.pack); the UDP part needs a `socket` module (LuaSocket) loadable by the
-- Lua that runs the script. Without one, the scripts use request files instead (see
-- mixdaemon_common.lua).
--
-- Argument types: Lua integers are sent as int32 ("i"), other numbers as float32 ("f"), strings
-- as "s", booleans as "T"/"F", {blob = bytes} as "b". Decoding also reads int64 "h", double "d",
-- "N" (nil), "I" (infinitum, read as math.huge) and bundles (time tags ignored).

local OSC = {}

local function padded(s)
  -- An OSC string: the bytes, a NUL, then NULs up to a multiple of 4.
  return s .. string.rep("\0", 4 - #s % 4)
end

local function blob(bytes)
  return string.pack(">i4", #bytes) .. bytes .. string.rep("\0", (4 - #bytes % 4) % 4)
end

function OSC.encode(address, args)
  assert(type(address) == "string" and address:sub(1, 1) == "/", "OSC address must start with '/'")
  local tags, data = {","}, {}
  for i, value in ipairs(args or {}) do
    local kind = type(value)
    if kind == "string" then
      tags[#tags + 1], data[#data + 1] = "s", padded(value)
    elseif kind == "number" and math.type(value) == "integer" then
      assert(value >= -2147483648 and value <= 2147483647, "argument " .. i .. ": integer does not fit int32")
      tags[#tags + 1], data[#data + 1] = "i", string.pack(">i4", value)
    elseif kind == "number" then
      tags[#tags + 1], data[#data + 1] = "f", string.pack(">f", value)
    elseif kind == "boolean" then
      tags[#tags + 1] = value and "T" or "F"
    elseif kind == "table" and type(value.blob) == "string" then
      tags[#tags + 1], data[#data + 1] = "b", blob(value.blob)
    else
      error("argument " .. i .. ": cannot send a " .. kind .. " over OSC")
    end
  end
  return padded(address) .. padded(table.concat(tags)) .. table.concat(data)
end

local function read_string(packet, pos)
  local stop = packet:find("\0", pos, true)
  if not stop then error("unterminated OSC string at byte " .. pos) end
  local text = packet:sub(pos, stop - 1)
  return text, pos + (#text // 4 + 1) * 4
end

local READERS = {
  i = function(p, pos) return string.unpack(">i4", p, pos) end,
  h = function(p, pos) return string.unpack(">i8", p, pos) end,
  f = function(p, pos) return string.unpack(">f", p, pos) end,
  d = function(p, pos) return string.unpack(">d", p, pos) end,
  s = read_string,
  S = read_string,
  b = function(p, pos)
    local size, start = string.unpack(">i4", p, pos)
    if size < 0 or start + size - 1 > #p then error("OSC blob runs past the end of the packet") end
    return {blob = p:sub(start, start + size - 1)}, start + size + (4 - size % 4) % 4
  end,
  T = function(_, pos) return true, pos end,
  F = function(_, pos) return false, pos end,
  N = function(_, pos) return nil, pos end,
  I = function(_, pos) return math.huge, pos end,
}

local function decode_message(packet)
  local address, pos = read_string(packet, 1)
  if address:sub(1, 1) ~= "/" then error("not an OSC message (address " .. address:sub(1, 40) .. ")") end
  local args, n = {}, 0
  if pos <= #packet then
    local tags
    tags, pos = read_string(packet, pos)
    if tags:sub(1, 1) ~= "," then error("OSC type tags must start with ','") end
    for i = 2, #tags do
      local tag = tags:sub(i, i)
      local reader = READERS[tag]
      if not reader then error("unsupported OSC type tag '" .. tag .. "'") end
      if pos > #packet + 1 then error("OSC packet ends before argument " .. (i - 1)) end
      n = n + 1
      args[n], pos = reader(packet, pos)
    end
  end
  return {address = address, args = args, n = n}
end

-- The messages of a packet (a message, or a bundle of messages and bundles), in order.
function OSC.decode(packet)
  if packet:sub(1, 8) ~= "#bundle\0" then
    return {decode_message(packet)}
  end
  local messages, pos = {}, 17  -- after "#bundle\0" and the 8-byte time tag
  while pos <= #packet do
    local size, start = string.unpack(">i4", packet, pos)
    for _, message in ipairs(OSC.decode(packet:sub(start, start + size - 1))) do
      messages[#messages + 1] = message
    end
    pos = start + size
  end
  return messages
end

-- A UDP client: sends from its own port (the daemon answers to the sender's address and port).
-- `socket` is the LuaSocket module; host must be a numeric IPv4 address.
function OSC.client(socket, host, port)
  local udp = assert(socket.udp())
  assert(udp:setsockname(host:match("^127%.") and host or "*", 0))
  udp:settimeout(0)
  local client = {}
  function client.send(address, args)
    local ok, err = udp:sendto(OSC.encode(address, args), host, port)
    if not ok then error("cannot send to " .. host .. ":" .. port .. ": " .. tostring(err)) end
  end
  -- The messages that have arrived, without waiting.
  function client.receive()
    local out = {}
    while true do
      local data = udp:receive()
      if not data then return out end
      local ok, messages = pcall(OSC.decode, data)
      if ok then
        for _, m in ipairs(messages) do out[#out + 1] = m end
      end
    end
  end
  function client.close() udp:close() end
  return client
end

return OSC
