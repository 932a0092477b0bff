-- mixdaemon for REAPER: what the mixdaemon_*.lua actions share. Every REAPER API call of the
-- integration is in this file; the action scripts only call one function of it.
--
-- Two ways to reach the daemon (setting "transport"):
--   osc   real OSC over UDP, the same messages as `mixdaemon send`; needs a `socket` module
--         (LuaSocket) that REAPER's Lua can load (setting "lua_cpath" adds search paths).
--   file  request files: <requests folder>/<name>.request, answered by the daemon in
--         <name>.reply, which a deferred loop polls. Needs nothing installed.
--   auto  (default) osc when LuaSocket loads, otherwise file.
-- The file format is described in mixdaemon/daemon/requestfiles.py, the OSC address space in
-- integrations/osc/ADDRESS_SPACE.md. Both transports turn the daemon's messages into the same
-- status table: {state, job_id, percent, stage, message, manifest, reply, reply_args}.
--
-- Settings live in REAPER's ExtState section "mixdaemon" (mixdaemon_settings.lua edits them);
-- the project's reference and its last conversion in the project's ExtState "mixdaemon".

local M = {}

local SECTION = "mixdaemon"
local HERE = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SEP = package.config:sub(1, 1)

-- Action "File: Render project, using the most recent render settings, auto-close render dialog".
local RENDER_ACTION = 42230
-- GetSetProjectInfo values: RENDER_SETTINGS &2 = stems of the selected tracks only (no master
-- mix), 32 = selected media items; RENDER_BOUNDSFLAG 1 = entire project, 4 = selected items.
local RENDER_STEMS, RENDER_ITEMS = 2, 32
local BOUNDS_PROJECT, BOUNDS_ITEMS = 1, 4
local NUMBER_SETTINGS = {"RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_CHANNELS", "RENDER_SRATE",
                         "RENDER_ADDTOPROJ", "RENDER_NORMALIZE", "RENDER_TAILFLAG"}
local TEXT_SETTINGS = {"RENDER_FILE", "RENDER_PATTERN", "RENDER_FORMAT"}

local STEMS = {"drums", "bass", "other", "vocals"}
local FINAL = {done = true, error = true, cancelled = true, ok = true, warning = true}
local SUBMIT = "/mixdaemon/submit"
local FOLLOWS_JOB = {[SUBMIT] = true, ["/mixdaemon/submit/files"] = true, ["/mixdaemon/cancel"] = true}

M.DEFAULTS = {
  transport = "auto",   -- auto | osc | file
  osc_host = "127.0.0.1",
  osc_port = "",        -- "": the port in <state folder>/daemon.json, else 7700
  state_dir = "",       -- "": $XDG_STATE_HOME/mixdaemon or ~/.local/state/mixdaemon (the daemon's default)
  requests_dir = "",    -- "": <state folder>/requests
  work_dir = "",        -- "": <project folder>/mixdaemon (renders, references and results)
  auto_import = "1",    -- import the converted stems as soon as the job is done
  timeout = "15",       -- seconds to wait for the daemon's first answer
  lua_cpath = "",       -- extra package.cpath entries (';'-separated) where LuaSocket lies
}

-- ---------------------------------------------------------------------------------------------
-- small helpers

function M.setting(key)
  local value = reaper.GetExtState(SECTION, key)
  if value == "" then value = M.DEFAULTS[key] end
  return value
end

function M.join(...)
  local out = ""
  for _, part in ipairs({...}) do
    if out == "" or out:match("[/\\]$") then out = out .. part else out = out .. SEP .. part end
  end
  return out
end

local function dirname(path) return path:match("^(.*)[/\\][^/\\]*$") or "" end
local function basename(path) return path:match("([^/\\]*)$") end
local function file_name_part(text) return (text:gsub("[^%w%-_. ]", "_")) end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

local function write_new_file(path, text)
  -- Written under another name and renamed: a reader never sees half a file.
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then error("cannot write " .. tmp .. ": " .. tostring(err), 0) end
  f:write(text)
  f:close()
  local ok, rename_err = os.rename(tmp, path)
  if not ok then os.remove(tmp); error("cannot create " .. path .. ": " .. tostring(rename_err), 0) end
end

local ESCAPE = {["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}
local UNESCAPE = {n = "\n", r = "\r", t = "\t"}
function M.escape(text) return (tostring(text):gsub("[\\\n\r\t]", ESCAPE)) end
function M.unescape(text) return (text:gsub("\\(.)", function(c) return UNESCAPE[c] or c end)) end

-- key=value lines (values escaped) → {key = last value}, {key = {every value, in order}}
function M.parse_lines(text)
  local last, all = {}, {}
  for line in text:gmatch("[^\n]+") do
    local key, value = line:gsub("\r$", ""):match("^([%w_]+)=(.*)$")
    if key then
      value = M.unescape(value)
      last[key] = value
      all[key] = all[key] or {}
      table.insert(all[key], value)
    end
  end
  return last, all
end

local function now() return reaper.time_precise() end

-- ---------------------------------------------------------------------------------------------
-- JSON (the result's manifest.json, the daemon's daemon.json): objects, arrays, strings, numbers,
-- true/false; null reads as nil.

M.json_null = setmetatable({}, {__tostring = function() return "null" end})

function M.json_decode(text)
  local pos = 1
  local function fail(what) error(("JSON: %s at byte %d"):format(what, pos), 0) end
  local function skip() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local SIMPLE = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}
  local function hex4(at) return tonumber(text:sub(at, at + 3):match("^%x%x%x%x$") or "", 16) end
  local function read_string()
    pos = pos + 1
    local parts = {}
    while true do
      local stop = text:find('["\\]', pos) or fail("unterminated string")
      parts[#parts + 1] = text:sub(pos, stop - 1)
      pos = stop
      if text:sub(pos, pos) == '"' then pos = pos + 1; return table.concat(parts) end
      local e = text:sub(pos + 1, pos + 1)
      if e == "u" then
        local code = hex4(pos + 2) or fail("bad \\u escape")
        pos = pos + 6
        local low = text:sub(pos, pos + 1) == "\\u" and hex4(pos + 2)
        if code >= 0xD800 and code <= 0xDBFF and low and low >= 0xDC00 and low <= 0xDFFF then
          code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
          pos = pos + 6
        end
        parts[#parts + 1] = utf8.char(code)
      else
        parts[#parts + 1] = SIMPLE[e] or fail("bad escape")
        pos = pos + 2
      end
    end
  end
  local read_value
  local function read_list(close, read_item)
    pos = pos + 1
    skip()
    if text:sub(pos, pos) == close then pos = pos + 1; return end
    while true do
      read_item()
      skip()
      local c = text:sub(pos, pos)
      pos = pos + 1
      if c == close then return end
      if c ~= "," then fail("expected ',' or '" .. close .. "'") end
      skip()
    end
  end
  function read_value()
    skip()
    local c = text:sub(pos, pos)
    if c == "{" then
      local object = {}
      read_list("}", function()
        if text:sub(pos, pos) ~= '"' then fail("expected a key") end
        local key = read_string()
        skip()
        if text:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        object[key] = read_value()
      end)
      return object
    elseif c == "[" then
      local array = {}
      read_list("]", function() array[#array + 1] = read_value() end)
      return array
    elseif c == '"' then
      return read_string()
    end
    for word, value in pairs({["true"] = true, ["false"] = false, ["null"] = M.json_null}) do
      if text:sub(pos, pos + #word - 1) == word then
        pos = pos + #word
        if value == M.json_null then return nil end
        return value
      end
    end
    local number = text:match("^-?%d+%.?%d*[eE][-+]?%d+", pos) or text:match("^-?%d+%.?%d*", pos)
    if not number then fail("unexpected character") end
    pos = pos + #number
    return tonumber(number)
  end
  local value = read_value()
  skip()
  if pos <= #text then fail("unexpected text after the value") end
  return value
end

-- ---------------------------------------------------------------------------------------------
-- showing what happens: the ReaScript console for progress, a message box for what needs an answer

function M.log(text) reaper.ShowConsoleMsg("mixdaemon: " .. text .. "\n") end

function M.fail(text)
  M.log("error: " .. text)
  reaper.MB(text, "mixdaemon", 0)
end

-- Runs fn; an error it raises is shown to the user (no Lua traceback dialog).
function M.guard(fn, ...)
  local ok, err = pcall(fn, ...)
  if not ok then M.fail(tostring(err)) end
end

local function arg(status, i) return status.reply_args and status.reply_args[i] end

-- One line for a status, for the console.
function M.describe(status)
  local state, job = status.state, status.job_id
  if state == "sent" then return "waiting for the daemon" end
  if state == "queued" then return ("job %s queued"):format(job) end
  if state == "running" then
    -- whole tens of percent: a line every 10 % or stage change, not 5 a second
    local percent = math.floor((tonumber(status.percent) or 0) / 10) * 10
    return ("job %s: %d%% %s"):format(job, percent, status.stage or "")
  end
  if state == "done" then return ("job %s done: %s"):format(job, dirname(status.manifest or "")) end
  if state == "error" then return "error: " .. (status.message or "failed") end
  if state == "warning" then return "warning: " .. (status.message or "") end
  if state == "cancelled" then return ("job %s cancelled"):format(job or arg(status, 1)) end
  local reply = status.reply or ""
  if reply == "/mixdaemon/pong" then return "mixdaemon " .. tostring(arg(status, 1)) .. " is running" end
  if reply == "/mixdaemon/status/summary" then
    local running = tonumber(arg(status, 6)) or -1
    return ("%s queued, %s running%s, %s done, %s failed, %s cancelled"):format(arg(status, 1), arg(status, 2),
      running >= 0 and (" (job " .. math.floor(running) .. ")") or "", arg(status, 3), arg(status, 4), arg(status, 5))
  end
  if reply == "/mixdaemon/status/reply" then
    return ("job %s: %s %d%% %s %s"):format(arg(status, 1), arg(status, 2), math.floor(tonumber(arg(status, 3)) or 0),
      arg(status, 4), arg(status, 5))
  end
  if reply == "/mixdaemon/preview/playing" then
    return ("playing job %s (%s, %.1f s)"):format(arg(status, 1), arg(status, 2), tonumber(arg(status, 3)) or 0)
  end
  if reply == "/mixdaemon/preview/stopped" then
    return tonumber(arg(status, 1)) == 1 and "preview stopped" or "nothing was playing"
  end
  if reply == "/mixdaemon/cancelled" then return ("job %s cancelled"):format(arg(status, 1)) end
  local parts = {reply}
  for _, value in ipairs(status.reply_args or {}) do parts[#parts + 1] = tostring(value) end
  return table.concat(parts, " ")
end

-- Polls a request from a deferred loop until it ends: shows each new status line; calls
-- on_change(status) at every change and on_end(status) at the end. Errors and warnings are shown
-- in a message box too.
function M.follow(request, on_change, on_end)
  local shown, last_state
  local function tick()
    local ok, status = pcall(request.poll)
    if not ok then status = {state = "error", message = tostring(status)} end
    local line = M.describe(status)
    if line ~= shown then
      shown = line
      if status.state == "error" or status.state == "warning" then
        M.fail(line)
      else
        M.log(line)
      end
    end
    if on_change and status.state ~= last_state then on_change(status) end
    last_state = status.state
    if FINAL[status.state] then
      request.close()
      if on_end then M.guard(on_end, status) end
    else
      reaper.defer(tick)
    end
  end
  tick()
end

-- ---------------------------------------------------------------------------------------------
-- the two transports

local function home() return os.getenv("HOME") or os.getenv("USERPROFILE") or "" end

function M.state_dir()
  local dir = M.setting("state_dir")
  if dir ~= "" then return dir end
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then base = M.join(home(), ".local", "state") end
  return M.join(base, "mixdaemon")
end

local function requests_dir()
  local dir = M.setting("requests_dir")
  return dir ~= "" and dir or M.join(M.state_dir(), "requests")
end

-- prefix-YYYYmmdd-HHMMSS-mmm (milliseconds), and a count if one script asks for several names.
local function unique_name(prefix)
  M.names = (M.names or 0) + 1
  local name = ("%s-%s-%03d"):format(prefix, os.date("%Y%m%d-%H%M%S"), math.floor(now() * 1000) % 1000)
  return M.names > 1 and (name .. "-" .. M.names) or name
end

local function file_transport()
  local dir = requests_dir()
  -- The daemon creates the folder; a file that can be created in it shows it is there.
  local probe_path = M.join(dir, ".mixdaemon-probe")
  local probe = io.open(probe_path, "wb")
  if not probe then
    error(("cannot write into the request folder %s: is `mixdaemon serve` running? (The folder can be set "
      .. "with mixdaemon_settings.lua.)"):format(dir), 0)
  end
  probe:close()
  os.remove(probe_path)
  local timeout = tonumber(M.setting("timeout")) or 15
  local transport = {name = "request files", where = dir}
  function transport.request(address, args)
    local name = unique_name("reaper")
    local request_path, reply_path = M.join(dir, name .. ".request"), M.join(dir, name .. ".reply")
    local lines = {"mixdaemon-request 1", "address=" .. M.escape(address)}
    for _, value in ipairs(args) do lines[#lines + 1] = "arg=" .. M.escape(value) end
    lines[#lines + 1] = "end"  -- the daemon reads a request only once its last line is there
    write_new_file(request_path, table.concat(lines, "\n") .. "\n")
    local sent, read_at, status = now(), 0, {state = "sent"}
    local request = {}
    function request.poll()
      if now() - read_at < 0.2 then return status end  -- REAPER defers ~30 times a second
      read_at = now()
      local text = read_file(reply_path)
      if not text then
        if now() - sent > timeout then
          os.remove(request_path)
          return {state = "error", message = ("the daemon did not take the request from %s within %g s: is "
            .. "`mixdaemon serve` running?"):format(dir, timeout)}
        end
        return {state = "sent"}
      end
      local all
      status, all = M.parse_lines(text)
      status.reply_args = all.reply_arg or {}
      status.job_id = tonumber(status.job_id)
      return status
    end
    function request.close()
      os.remove(request_path)
      os.remove(reply_path)
    end
    return request
  end
  return transport
end

local function load_socket()
  local extra = M.setting("lua_cpath")
  if extra ~= "" and not package.cpath:find(extra, 1, true) then package.cpath = extra .. ";" .. package.cpath end
  local ok, socket = pcall(require, "socket")
  return ok and type(socket) == "table" and socket.udp and socket or nil
end

-- A status after one OSC message; the same rules as mixdaemon/daemon/requestfiles.py apply_message (every
-- message on a request's socket is about that request).
local function apply_message(status, request, address, args)
  local out = {}
  for k, v in pairs(status) do out[k] = v end
  out.reply, out.reply_args = address, args
  local submit = request == SUBMIT or request == "/mixdaemon/submit/files"
  if address == "/mixdaemon/error" then
    out.state, out.message = "error", tostring(args[2] or "refused")
  elseif address == "/mixdaemon/queued" then
    out.state, out.job_id = "queued", args[1]
  elseif address == "/mixdaemon/progress" then
    out.state, out.percent, out.stage = "running", args[2], args[3]
  elseif address == "/mixdaemon/done" then
    if submit then
      out.state, out.manifest, out.percent, out.stage = "done", args[2], 100.0, "done"
    else
      out.state, out.message = "warning", ("job %s finished before it could be cancelled"):format(args[1])
    end
  elseif address == "/mixdaemon/cancelled" then
    out.state = submit and "cancelled" or "ok"
  elseif address == "/mixdaemon/warning" then
    out.state, out.message = "warning", tostring(args[2] or "")
  elseif address == "/mixdaemon/status/reply" and request ~= "/mixdaemon/status" then
    local job, state, percent, stage, info = args[1], args[2], args[3], args[4], args[5]
    if state == "done" then return apply_message(status, request, "/mixdaemon/done", {job, M.join(info, "manifest.json")}) end
    if state == "cancelled" then return apply_message(status, request, "/mixdaemon/cancelled", {job}) end
    if state == "error" then
      out.state, out.message = "error", info
    elseif submit then
      out.state, out.percent, out.stage = state, percent, stage
    else
      return status
    end
  else
    out.state = "ok"
  end
  return out
end

local function daemon_port()
  local text = read_file(M.join(M.state_dir(), "daemon.json"))
  local ok, info = pcall(M.json_decode, text or "")
  return ok and type(info) == "table" and tonumber(info.osc_port) or nil
end

local function osc_transport(socket)
  local OSC = dofile(HERE .. "mixdaemon_osc.lua")
  local host = M.setting("osc_host")
  if not host:match("^[%d.]+$") then host = socket.dns.toip(host) or host end
  local port = tonumber(M.setting("osc_port")) or daemon_port() or 7700
  local timeout = tonumber(M.setting("timeout")) or 15
  local transport = {name = "OSC", where = ("%s:%d"):format(host, port)}
  function transport.request(address, args)
    local client = OSC.client(socket, host, port)
    client.send(address, args)
    local sent, heard = now(), now()
    local status = {state = "sent"}
    -- A running job's cancellation is confirmed at its next progress point: follow the job.
    if address == "/mixdaemon/cancel" then status.job_id = tonumber(args[1]) end
    local request = {}
    function request.poll()
      for _, message in ipairs(client.receive()) do
        status = apply_message(status, address, message.address, message.args)
        heard = now()
      end
      if status.job_id and FOLLOWS_JOB[address] and not FINAL[status.state] then
        if now() - heard > 2 then  -- a quiet job: ask (someone else's job, or a daemon restart)
          client.send("/mixdaemon/status", {math.floor(status.job_id)})
          heard = now()
        end
      elseif status.state == "sent" and now() - sent > timeout then
        return {state = "error", message = ("no answer from %s within %g s: is `mixdaemon serve` running there?")
          :format(transport.where, timeout)}
      end
      return status
    end
    request.close = client.close
    return request
  end
  return transport
end

-- The transport the settings ask for.
function M.transport()
  local choice = M.setting("transport")
  if choice ~= "file" then
    local socket = load_socket()
    if socket then return osc_transport(socket) end
    if choice == "osc" then
      error("transport is 'osc' but no LuaSocket `socket` module loads in REAPER's Lua; install one (and set "
        .. "lua_cpath), or set the transport to auto", 0)
    end
  end
  return file_transport()
end

-- Sends a request and follows it (see M.follow).
function M.send(address, args, on_change, on_end)
  M.follow(M.transport().request(address, args), on_change, on_end)
end

-- ---------------------------------------------------------------------------------------------
-- the project

local function current_project() return (reaper.EnumProjects(-1, "")) end

local function project_folder()
  local _, file = reaper.EnumProjects(-1, "")
  local folder = dirname(file or "")
  if folder == "" then folder = reaper.GetProjectPath("") end
  return folder
end

local function project_name(project)
  local name = reaper.GetProjectName(project, ""):gsub("%.[Rr][Pp][Pp]$", "")
  return name ~= "" and name or "Untitled"
end

function M.work_dir()
  local dir = M.setting("work_dir")
  return dir ~= "" and dir or M.join(project_folder(), "mixdaemon")
end

function M.reference(project)
  local _, path = reaper.GetProjExtState(project, SECTION, "reference")
  return path
end

-- The last conversion of the project: where its stems came from and where its job stands.
local JOB_KEYS = {"name", "job_id", "state", "render_dir", "render_start", "reference", "out_root", "manifest"}
local TRACK_KEYS = {"guid", "name", "file", "start"}

function M.save_job(project, job)
  local lines = {}
  for _, key in ipairs(JOB_KEYS) do
    if job[key] ~= nil then lines[#lines + 1] = key .. "=" .. M.escape(job[key]) end
  end
  for _, track in ipairs(job.tracks) do
    for _, key in ipairs(TRACK_KEYS) do lines[#lines + 1] = "track_" .. key .. "=" .. M.escape(track[key]) end
  end
  -- escaped once more: one line, whatever the project file does with line breaks
  reaper.SetProjExtState(project, SECTION, "last_job", M.escape(table.concat(lines, "\n")))
end

function M.load_job(project)
  local _, text = reaper.GetProjExtState(project, SECTION, "last_job")
  if text == "" then return nil end
  local job, all = M.parse_lines(M.unescape(text))
  job.job_id, job.render_start = tonumber(job.job_id), tonumber(job.render_start) or 0
  job.tracks = {}
  for i, guid in ipairs(all.track_guid or {}) do
    job.tracks[i] = {guid = guid, name = all.track_name[i], file = all.track_file[i], start = tonumber(all.track_start[i]) or 0}
  end
  return job
end

local function selected_tracks(project)
  local tracks = {}
  for i = 0, reaper.CountSelectedTracks(project) - 1 do
    local track = reaper.GetSelectedTrack(project, i)
    local _, name = reaper.GetSetMediaTrackInfo_String(track, "P_NAME", "", false)
    local start
    for j = 0, reaper.CountTrackMediaItems(track) - 1 do
      local position = reaper.GetMediaItemInfo_Value(reaper.GetTrackMediaItem(track, j), "D_POSITION")
      start = math.min(start or position, position)
    end
    tracks[#tracks + 1] = {guid = reaper.GetTrackGUID(track), name = name, start = start or 0}
  end
  return tracks
end

local function track_by_guid(project, guid)
  for i = 0, reaper.CountTracks(project) - 1 do
    local track = reaper.GetTrack(project, i)
    if reaper.GetTrackGUID(track) == guid then return track end
  end
end

-- Renders with the given RENDER_* settings and puts the project's own render settings back
-- afterwards; returns the files written (REAPER's RENDER_TARGETS, checked on disk).
local function render(project, settings)
  local saved = {}
  for _, key in ipairs(NUMBER_SETTINGS) do saved[key] = reaper.GetSetProjectInfo(project, key, 0, false) end
  for _, key in ipairs(TEXT_SETTINGS) do
    local _, value = reaper.GetSetProjectInfo_String(project, key, "", false)
    saved[key] = value
  end
  local function apply(values)
    for _, key in ipairs(NUMBER_SETTINGS) do reaper.GetSetProjectInfo(project, key, values[key], true) end
    for _, key in ipairs(TEXT_SETTINGS) do reaper.GetSetProjectInfo_String(project, key, values[key], true) end
  end
  local ok, result = pcall(function()
    apply(settings)
    local _, targets = reaper.GetSetProjectInfo_String(project, "RENDER_TARGETS", "", false)
    local files = {}
    for file in targets:gmatch("[^;]+") do files[#files + 1] = file end
    reaper.Main_OnCommand(RENDER_ACTION, 0)
    for _, file in ipairs(files) do
      if not reaper.file_exists(file) then error("the render did not write " .. file .. " (was it cancelled?)", 0) end
    end
    return files
  end)
  apply(saved)
  if not ok then error(result, 0) end
  return result
end

local function render_settings(folder, pattern, source, bounds)
  return {RENDER_FILE = folder, RENDER_PATTERN = pattern, RENDER_FORMAT = "evaw", RENDER_SETTINGS = source,
          RENDER_BOUNDSFLAG = bounds, RENDER_CHANNELS = 2, RENDER_SRATE = 0, RENDER_ADDTOPROJ = 0,
          RENDER_NORMALIZE = 0, RENDER_TAILFLAG = 0}
end

-- ---------------------------------------------------------------------------------------------
-- importing a result

local function insert_converted(project, index, name, file, start, render_start)
  if not reaper.file_exists(file) then error("converted stem " .. file .. " is missing", 0) end
  reaper.InsertTrackAtIndex(index, true)
  local track = reaper.GetTrack(project, index)
  reaper.GetSetMediaTrackInfo_String(track, "P_NAME", name, true)
  local item = reaper.AddMediaItemToTrack(track)
  local take = reaper.AddTakeToMediaItem(item)
  local source = reaper.PCM_Source_CreateFromFile(file)
  reaper.SetMediaItemTake_Source(take, source)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", basename(file), true)
  -- The render ran from render_start, so the converted audio lines up with the originals when
  -- it starts there; the item is trimmed to begin where the originals begin.
  local offset = math.max(0, start - render_start)
  local length = reaper.GetMediaSourceLength(source)
  reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", offset)
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", render_start + offset)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", math.max(0, length - offset))
end

-- The new tracks of a result: one per stem role the selected tracks had (named after the tracks
-- of that role), or all four stems of a full mix that the daemon separated (a single track not
-- named like a stem).
local function result_tracks(job, manifest)
  local role_of = {}
  for _, input in ipairs(manifest.inputs or {}) do role_of[basename(input.path)] = input.role end
  local outputs = manifest.outputs or {}
  local groups, by_role = {}, {}
  local only = #(manifest.inputs or {}) == 1 and manifest.inputs[1].role
  for _, track in ipairs(job.tracks) do
    local role = role_of[basename(track.file)]
    if role and (only == "other" or only == "mixture") then
      for _, stem in ipairs(STEMS) do
        groups[#groups + 1] = {tracks = {track}, file = outputs[stem], name = ("%s %s (converted)"):format(track.name, stem)}
      end
    elseif role then
      local group = by_role[role]
      if not group then
        group = {tracks = {}, file = outputs[role]}
        by_role[role], groups[#groups + 1] = group, group
      end
      table.insert(group.tracks, track)
    end
  end
  for _, group in ipairs(groups) do
    if not group.name then
      local names = {}
      for _, track in ipairs(group.tracks) do names[#names + 1] = track.name end
      group.name = table.concat(names, " + ") .. " (converted)"
    end
    for _, track in ipairs(group.tracks) do group.start = math.min(group.start or track.start, track.start) end
  end
  return groups
end

function M.import_job(project, job)
  local text = read_file(job.manifest or "")
  if not text then error("the result's manifest " .. tostring(job.manifest) .. " is missing", 0) end
  local groups = result_tracks(job, M.json_decode(text))
  if #groups == 0 then error("none of the converted stems belongs to a track of the last conversion", 0) end
  -- Each group goes right below the lowest of its original tracks (at the end if they are gone).
  -- Inserting from the bottom up keeps the positions above valid.
  for i, group in ipairs(groups) do
    group.order, group.below = i, 0
    for _, track in ipairs(group.tracks) do
      local original = track_by_guid(project, track.guid)
      if original then group.below = math.max(group.below, reaper.GetMediaTrackInfo_Value(original, "IP_TRACKNUMBER")) end
    end
    if group.below == 0 then group.below = reaper.CountTracks(project) + i end
  end
  table.sort(groups, function(a, b)
    if a.below ~= b.below then return a.below > b.below end
    return a.order > b.order
  end)
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  local ok, err = pcall(function()
    for _, group in ipairs(groups) do
      local index = math.min(math.floor(group.below), reaper.CountTracks(project))
      insert_converted(project, index, group.name, group.file, group.start, job.render_start)
    end
  end)
  reaper.PreventUIRefresh(-1)
  reaper.TrackList_AdjustWindows(false)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock("mixdaemon: import converted stems", -1)
  if not ok then error(err, 0) end
  table.sort(groups, function(a, b) return a.order < b.order end)
  local names = {}
  for _, group in ipairs(groups) do names[#names + 1] = group.name end
  M.log(("imported %d converted stem(s): %s"):format(#groups, table.concat(names, ", ")))
end

-- ---------------------------------------------------------------------------------------------
-- the actions

function M.convert_selected_tracks()
  M.guard(function()
    local project = current_project()
    local tracks = selected_tracks(project)
    if #tracks == 0 then error("select the tracks to convert first", 0) end
    local transport = M.transport()  -- before rendering: no daemon, no render
    local work = M.work_dir()
    local name = unique_name(file_name_part(project_name(project)))
    local job = {name = name, render_dir = M.join(work, "renders", name), render_start = 0,
                 reference = M.reference(project), out_root = work, tracks = tracks, state = "rendering"}
    reaper.RecursiveCreateDirectory(job.render_dir, 0)
    local files = render(project, render_settings(job.render_dir, "$track", RENDER_STEMS, BOUNDS_PROJECT))
    if #files ~= #tracks then
      error(("REAPER rendered %d file(s) for %d selected track(s)"):format(#files, #tracks), 0)
    end
    for i, file in ipairs(files) do tracks[i].file = file end  -- RENDER_TARGETS lists them in track order
    M.log(("rendered %d track(s) to %s; sending them over %s (%s)"):format(#files, job.render_dir, transport.name, transport.where))
    job.state = "sent"
    M.save_job(project, job)
    local request = transport.request(SUBMIT, {job.render_dir, job.reference, job.out_root})
    M.follow(request, function(status)
      job.job_id, job.state, job.manifest = status.job_id or job.job_id, status.state, status.manifest
      M.save_job(project, job)
    end, function(status)
      if status.state ~= "done" or M.setting("auto_import") ~= "1" then return end
      if current_project() ~= project then
        M.log("the project of this conversion is not the active one: switch to it and run mixdaemon_import_result")
      else
        M.import_job(project, job)
      end
    end)
  end)
end

function M.import_last_result()
  M.guard(function()
    local project = current_project()
    local job = M.load_job(project)
    if not job then error("this project has no conversion yet: select tracks and run mixdaemon_convert_selected_tracks", 0) end
    if job.manifest and job.manifest ~= "" and reaper.file_exists(job.manifest) then return M.import_job(project, job) end
    if not job.job_id then error(("the last conversion (%s) has no job: it is %s"):format(job.name, job.state), 0) end
    M.send("/mixdaemon/status", {tostring(job.job_id)}, nil, function(status)
      if status.state ~= "ok" then return end
      local state, info = arg(status, 2), arg(status, 5)
      if state ~= "done" then error(("job %s is %s%s; import it when it is done"):format(job.job_id, state,
        state == "error" and (": " .. info) or ""), 0) end
      job.state, job.manifest = "done", M.join(info, "manifest.json")
      M.save_job(project, job)
      M.import_job(project, job)
    end)
  end)
end

-- ---------------------------------------------------------------------------------------------
-- applying a param-engine result's fx_params.json to the tracks it came from
--
-- Each original track of the last conversion gets its stem's chain (fx_params.json, written by
-- mixdaemon/fxchain.py) as REAPER effects and track settings:
--   EQ            "mixdaemon EQ" (ReaEQ: low shelf, band, band, high shelf = low shelf, peaks 1-2,
--                 high shelf) and "mixdaemon EQ 2" (ReaEQ, first band = peak 3, its other bands off),
--                 because a new ReaEQ has four bands and the chain has five;
--   compressor    "mixdaemon comp" (ReaComp: Thresh, Ratio, Attack, Release), bypassed when off;
--   gain          track volume D_VOL (linear, 1 = 0 dB);
--   width, pan    track pan mode "stereo pan" (I_PANMODE 5), D_WIDTH and D_PAN. REAPER's width cannot
--                 widen: a width above 1 is set to 1 and reported;
--   reverb send   not applied (no reverb bus is created); reported in the console.
-- Running the action again updates the same effects instead of adding more.
--
-- How values get into the plug-ins: ReaEQ and ReaComp take normalized (0-1) parameter values whose
-- curves REAPER does not document. Rather than hard-coding guessed curves, each value is found by
-- bisection on TrackFX_FormatParamValueNormalized (the plug-in's own display text for a normalized
-- value; Cockos plug-ins support it), then set with TrackFX_SetParamNormalized. Assumptions, stated:
-- the display grows with the normalized value and starts with the number in the unit the chain uses
-- (Hz, a "k" suffix meaning ×1000; dB; ms; ratio as "R:1"); ReaEQ's third band parameter is its
-- bandwidth in octaves, converted from the chain's Q (N = 2/ln 2 · asinh(1/(2Q))); ReaEQ's bands are
-- found with TrackFX_GetEQParam (band types 1 low shelf, 2 band, 4 high shelf); ReaComp's
-- parameters by name (TrackFX_GetParamName starting with Thresh, Ratio, Attack, Release).

local FX_PARAMS_NAME = "fx_params.json"
local EQ_NAME, EQ2_NAME, COMP_NAME = "mixdaemon EQ", "mixdaemon EQ 2", "mixdaemon comp"
local LOSHELF, BAND, HISHELF = 1, 2, 4
local FREQ, GAIN, BANDWIDTH = 0, 1, 2
local PANMODE_STEREO_PAN = 5

-- The number a plug-in displays: "-12.5", "+3.0", "1.20k", "4.0:1", "-inf".
function M.display_number(text)
  local s = tostring(text or ""):gsub(",", ".")
  if s:lower():find("inf") then return s:find("^%s*%-") and -math.huge or math.huge end
  local number, suffix = s:match("([%+%-]?%d+%.?%d*)%s*([kK]?)")
  if not number then return nil end
  return tonumber(number) * (suffix ~= "" and 1000 or 1)
end

function M.octaves_of_q(q) return 2 / math.log(2) * math.log(1 / (2 * q) + math.sqrt(1 / (4 * q * q) + 1)) end

local function set_by_display(track, fx, param, target, what)
  local low, high = 0.0, 1.0
  for _ = 1, 32 do
    local middle = (low + high) / 2
    local ok, text = reaper.TrackFX_FormatParamValueNormalized(track, fx, param, middle, "")
    local value = ok and M.display_number(text)
    if not value then error(("%s: the plug-in shows %q, not a number"):format(what, tostring(text)), 0) end
    if value < target then low = middle else high = middle end
  end
  reaper.TrackFX_SetParamNormalized(track, fx, param, (low + high) / 2)
end

-- The track's effect renamed `name`, else a new `plugin` renamed so.
local function named_fx(track, plugin, name)
  for i = 0, reaper.TrackFX_GetCount(track) - 1 do
    local ok, renamed = reaper.TrackFX_GetNamedConfigParm(track, i, "renamed_name")
    if ok and renamed == name then return i end
  end
  local fx = reaper.TrackFX_AddByName(track, plugin, false, -1)
  if fx < 0 then error(("cannot add %s to a track"):format(plugin), 0) end
  reaper.TrackFX_SetNamedConfigParm(track, fx, "renamed_name", name)
  return fx
end

local function eq_params(track, fx)
  local found = {}
  for p = 0, reaper.TrackFX_GetNumParams(track, fx) - 1 do
    local ok, bandtype, bandidx, paramtype = reaper.TrackFX_GetEQParam(track, fx, p)
    if ok then found[("%d:%d:%d"):format(bandtype, bandidx, paramtype)] = p end
  end
  return found
end

local function set_band(track, fx, params, bandtype, bandidx, band, label)
  local function param(kind)
    local p = params[("%d:%d:%d"):format(bandtype, bandidx, kind)]
    if not p then error(("ReaEQ has no %s band (band type %d, index %d)"):format(label, bandtype, bandidx), 0) end
    return p
  end
  reaper.TrackFX_SetEQBandEnabled(track, fx, bandtype, bandidx, true)
  set_by_display(track, fx, param(FREQ), band.freq_hz, label .. " frequency")
  set_by_display(track, fx, param(GAIN), band.gain_db, label .. " gain")
  set_by_display(track, fx, param(BANDWIDTH), M.octaves_of_q(band.q), label .. " bandwidth")
end

local function apply_chain(track, chain, notes)
  local eq = named_fx(track, "ReaEQ", EQ_NAME)
  local params = eq_params(track, eq)
  set_band(track, eq, params, LOSHELF, 0, chain.eq[1], "low shelf")
  set_band(track, eq, params, BAND, 0, chain.eq[2], "peak 1")
  set_band(track, eq, params, BAND, 1, chain.eq[3], "peak 2")
  set_band(track, eq, params, HISHELF, 0, chain.eq[5], "high shelf")
  local eq2 = named_fx(track, "ReaEQ", EQ2_NAME)
  set_band(track, eq2, eq_params(track, eq2), BAND, 0, chain.eq[4], "peak 3")
  for _, other in ipairs({{LOSHELF, 0}, {BAND, 1}, {HISHELF, 0}}) do
    reaper.TrackFX_SetEQBandEnabled(track, eq2, other[1], other[2], false)
  end

  local comp = named_fx(track, "ReaComp", COMP_NAME)
  local settings = chain.compressor
  local active = settings.ratio > 1.001 and settings.threshold_db < 0
  if active then
    local wanted = {Thresh = settings.threshold_db, Ratio = settings.ratio, Attack = settings.attack_ms,
                    Release = settings.release_ms}
    for p = 0, reaper.TrackFX_GetNumParams(track, comp) - 1 do
      local _, name = reaper.TrackFX_GetParamName(track, comp, p, "")
      for prefix, value in pairs(wanted) do
        if name:lower():sub(1, #prefix) == prefix:lower() then
          set_by_display(track, comp, p, value, "compressor " .. prefix)
          wanted[prefix] = nil
        end
      end
    end
    local missing = next(wanted)
    if missing then error("ReaComp has no parameter named " .. missing, 0) end
  end
  reaper.TrackFX_SetEnabled(track, comp, active)

  reaper.SetMediaTrackInfo_Value(track, "D_VOL", 10 ^ (chain.gain_db / 20))
  reaper.SetMediaTrackInfo_Value(track, "I_PANMODE", PANMODE_STEREO_PAN)
  reaper.SetMediaTrackInfo_Value(track, "D_PAN", chain.pan)
  reaper.SetMediaTrackInfo_Value(track, "D_WIDTH", math.min(chain.width, 1))
  if chain.width > 1 then notes[#notes + 1] = ("width %.2f set to 1 (REAPER cannot widen)"):format(chain.width) end
  if chain.reverb.send_db then
    notes[#notes + 1] = ("reverb send %.1f dB (room size %.2f) not applied"):format(chain.reverb.send_db, chain.reverb.room_size)
  end
end

function M.apply_fx_params()
  M.guard(function()
    local project = current_project()
    local job = M.load_job(project)
    if not job then error("this project has no conversion yet: select tracks and run mixdaemon_convert_selected_tracks", 0) end
    local manifest_text = read_file(job.manifest or "")
    if not manifest_text then
      error(("the last conversion (%s) has no result yet; run mixdaemon_import_result when it is done"):format(job.name), 0)
    end
    local path = M.join(dirname(job.manifest), FX_PARAMS_NAME)
    local text = read_file(path)
    if not text then error(("no %s beside %s: convert with the param engine (--engine param)"):format(FX_PARAMS_NAME, job.manifest), 0) end
    local fx_params, manifest = M.json_decode(text), M.json_decode(manifest_text)
    local role_of = {}
    for _, input in ipairs(manifest.inputs or {}) do role_of[basename(input.path)] = input.role end
    reaper.Undo_BeginBlock()
    reaper.PreventUIRefresh(1)
    local applied = {}
    local ok, err = pcall(function()
      for _, entry in ipairs(job.tracks) do
        local role = role_of[basename(entry.file or "")]
        local chain = role and fx_params.stems[role]
        local track = track_by_guid(project, entry.guid)
        if chain and track then
          local notes = {}
          apply_chain(track, chain, notes)
          applied[#applied + 1] = entry.name .. " (" .. role .. ")" .. (#notes > 0 and (": " .. table.concat(notes, "; ")) or "")
        end
      end
    end)
    reaper.PreventUIRefresh(-1)
    reaper.UpdateArrange()
    reaper.Undo_EndBlock("mixdaemon: apply FX settings", -1)
    if not ok then error(err, 0) end
    if #applied == 0 then
      error("no track of the last conversion has a stem chain in " .. path .. " (a full mix cannot take per-stem settings)", 0)
    end
    M.log(("applied the FX settings of %s to %d track(s):\n  %s"):format(path, #applied, table.concat(applied, "\n  ")))
  end)
end

function M.set_reference()
  M.guard(function()
    local project = current_project()
    local count, path = reaper.CountSelectedMediaItems(project), nil
    if count > 1 then error("select one item (the reference song), or none to choose a file", 0) end
    if count == 1 then
      -- The item is rendered as it sounds (its trim, fades, take FX) to a WAV the daemon reads.
      local take = reaper.GetActiveTake(reaper.GetSelectedMediaItem(project, 0))
      if not take then error("the selected item has no take", 0) end
      local source_name = basename(reaper.GetMediaSourceFileName(reaper.GetMediaItemTake_Source(take), ""))
      local folder = M.join(M.work_dir(), "references")
      reaper.RecursiveCreateDirectory(folder, 0)
      local stem = source_name:gsub("%.[^.]*$", "")
      local name = unique_name(file_name_part(stem ~= "" and stem or "reference"))
      local files = render(project, render_settings(folder, name, RENDER_ITEMS, BOUNDS_ITEMS))
      if #files ~= 1 then error(("REAPER rendered %d file(s) for the selected item"):format(#files), 0) end
      path = files[1]
    else
      local chosen, file = reaper.GetUserFileNameForRead(M.work_dir(), "mixdaemon: the reference song (WAV, FLAC or AIFF)", "wav")
      if not chosen then return end
      if not reaper.file_exists(file) then error(file .. " does not exist", 0) end
      path = file
    end
    reaper.SetProjExtState(project, SECTION, "reference", path)
    M.log("reference for this project: " .. path)
  end)
end

function M.preview(mode)
  M.guard(function()
    local job = M.load_job(current_project())
    if not (job and job.job_id) then error("nothing to preview: convert tracks first", 0) end
    M.send("/mixdaemon/preview", {tostring(job.job_id), mode})
  end)
end

function M.cancel_last_job()
  M.guard(function()
    local job = M.load_job(current_project())
    if not (job and job.job_id) then error("no conversion of this project is queued or running", 0) end
    M.send("/mixdaemon/cancel", {tostring(job.job_id)})
  end)
end

function M.stop_preview()
  M.guard(M.send, "/mixdaemon/preview/stop", {})
end

function M.show_status()
  M.guard(function()
    local job = M.load_job(current_project())
    M.send("/mixdaemon/status", {}, nil, function(status)
      if status.state == "ok" and job and job.job_id then M.send("/mixdaemon/status", {tostring(job.job_id)}) end
    end)
  end)
end

local SETTINGS_FORM = {
  {"transport", "transport: auto, osc or file"},
  {"osc_host", "OSC host"},
  {"osc_port", "OSC port (empty: from daemon.json)"},
  {"state_dir", "daemon state folder (empty: default)"},
  {"requests_dir", "request folder (empty: <state>/requests)"},
  {"work_dir", "work folder (empty: <project>/mixdaemon)"},
  {"auto_import", "import when done (1 or 0)"},
  {"lua_cpath", "LuaSocket search path (package.cpath)"},
}

function M.edit_settings()
  M.guard(function()
    local captions, values = {}, {}
    for i, field in ipairs(SETTINGS_FORM) do
      captions[i], values[i] = field[2], reaper.GetExtState(SECTION, field[1])
    end
    local ok, csv = reaper.GetUserInputs("mixdaemon settings (paths must not contain commas)", #SETTINGS_FORM,
      table.concat(captions, ",") .. ",extrawidth=300", table.concat(values, ","))
    if not ok then return end
    local answers = {}
    for value in (csv .. ","):gmatch("(.-),") do answers[#answers + 1] = value:match("^%s*(.-)%s*$") end
    local transport = answers[1] == "" and "auto" or answers[1]
    if transport ~= "auto" and transport ~= "osc" and transport ~= "file" then
      error("transport '" .. transport .. "': choose auto, osc or file", 0)
    end
    if answers[7] ~= "" and answers[7] ~= "0" and answers[7] ~= "1" then error("import when done: 1 or 0", 0) end
    for i, field in ipairs(SETTINGS_FORM) do reaper.SetExtState(SECTION, field[1], answers[i] or "", true) end
    M.log("settings saved")
  end)
end

return M
