-- A stand-in for REAPER's `reaper` API, to run the mixdaemon ReaScripts under a plain Lua
-- interpreter in tests:
--
--     lua5.4 tests/support/reaper_stub.lua PROJECT.lua OUT.json SCRIPT.lua
--
-- PROJECT.lua returns the project (tracks, items, ExtStates, render settings, answers to dialogs);
-- it is rewritten after the run, so one run's result is the next run's project. OUT.json receives
-- every reaper.* call with its arguments, the console text, the message boxes, the project's
-- tracks afterwards, and the script's error if it raised one. reaper.defer callbacks run in a loop
-- with a short sleep between rounds (real time passes, so a daemon can work meanwhile).
--
-- Only the functions below exist: a script calling anything else fails with a clear error. The
-- render action (42230) writes real files: each selected track's `render_source` WAV (stems), or
-- the selected item's source file (items), to the paths RENDER_TARGETS names.

local project_path, out_path, script_path = arg[1], arg[2], arg[3]
local S = dofile(project_path)
S.tracks = S.tracks or {}
S.ext_state = S.ext_state or {}
S.proj_ext_state = S.proj_ext_state or {}
S.render = S.render or {}
S.answers = S.answers or {}
local PROJECT = {kind = "project"}
local calls, console, boxes, deferred = {}, {}, {}, {}
local guid_counter = 0

local function new_guid()
  guid_counter = guid_counter + 1
  return ("{STUB-%d-%08d}"):format(os.time(), guid_counter)
end

local function check_project(proj)
  assert(proj == 0 or proj == PROJECT or proj == nil, "expected a project (0 or EnumProjects' result)")
end

local function read_all(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

local function copy_file(from, to)
  local f = assert(io.open(to, "wb"))
  f:write(read_all(from))
  f:close()
end

local function wav_seconds(path)
  local data = read_all(path)
  local pos, rate, align = 13, nil, nil
  while pos + 8 <= #data do
    local id, size = data:sub(pos, pos + 3), string.unpack("<I4", data, pos + 4)
    if id == "fmt " then
      rate, align = string.unpack("<I4", data, pos + 12), string.unpack("<I2", data, pos + 20)
    elseif id == "data" then
      return size / align / rate
    end
    pos = pos + 8 + size + size % 2
  end
  error(path .. ": no WAV data chunk")
end

local function selected_tracks()
  local out = {}
  for _, t in ipairs(S.tracks) do if t.selected then out[#out + 1] = t end end
  return out
end

local function selected_items()
  local out = {}
  for _, t in ipairs(S.tracks) do
    for _, item in ipairs(t.items) do if item.selected then out[#out + 1] = item end end
  end
  return out
end

local function render_targets()
  local folder, pattern, source = S.render.RENDER_FILE or "", S.render.RENDER_PATTERN or "", S.render.RENDER_SETTINGS or 0
  local targets = {}
  if source & 2 ~= 0 then
    for _, t in ipairs(selected_tracks()) do
      targets[#targets + 1] = {path = folder .. "/" .. pattern:gsub("%$track", t.name) .. ".wav", from = t.render_source}
    end
  elseif source & 32 ~= 0 then
    for _, item in ipairs(selected_items()) do
      targets[#targets + 1] = {path = folder .. "/" .. pattern .. ".wav", from = item.takes[1].source.file}
    end
  end
  return targets
end

local function track_value(track, key)
  local numbers = {D_VOL = "volume", D_PAN = "pan", D_WIDTH = "width", I_PANMODE = "pan_mode"}
  if numbers[key] then return track[numbers[key]] or ({D_VOL = 1, D_PAN = 0, D_WIDTH = 1, I_PANMODE = -1})[key] end
  if key == "IP_TRACKNUMBER" then
    for i, t in ipairs(S.tracks) do if t == track then return i end end
    return 0
  end
  error("GetMediaTrackInfo_Value: key " .. key .. " is not in the stub")
end

local ITEM_KEYS = {D_POSITION = "position", D_LENGTH = "length"}
local RENDER_NUMBER_KEYS = {RENDER_SETTINGS = true, RENDER_BOUNDSFLAG = true, RENDER_CHANNELS = true, RENDER_SRATE = true,
                            RENDER_ADDTOPROJ = true, RENDER_NORMALIZE = true, RENDER_TAILFLAG = true,
                            RENDER_STARTPOS = true, RENDER_ENDPOS = true}
local RENDER_TEXT_KEYS = {RENDER_FILE = true, RENDER_PATTERN = true, RENDER_FORMAT = true}

local API = {}

function API.ShowConsoleMsg(text) console[#console + 1] = text end
function API.MB(text, title, kind)
  boxes[#boxes + 1] = text
  return S.answers.mb or 1
end
function API.defer(fn) deferred[#deferred + 1] = fn end
function API.time_precise()
  local f = io.open("/proc/uptime")
  local seconds = f and f:read("n") or os.time()
  if f then f:close() end
  return seconds
end

function API.GetExtState(section, key) return (S.ext_state[section] or {})[key] or "" end
function API.SetExtState(section, key, value, persist)
  S.ext_state[section] = S.ext_state[section] or {}
  S.ext_state[section][key] = value
end
function API.GetProjExtState(proj, ext, key)
  check_project(proj)
  local value = (S.proj_ext_state[ext] or {})[key] or ""
  return value ~= "" and 1 or 0, value
end
function API.SetProjExtState(proj, ext, key, value)
  check_project(proj)
  S.proj_ext_state[ext] = S.proj_ext_state[ext] or {}
  S.proj_ext_state[ext][key] = value
  return 1
end

function API.EnumProjects(index, _) assert(index == -1, "the stub has only the current project"); return PROJECT, S.project_file end
function API.GetProjectPath(_) return S.project_media_path or "" end
function API.GetProjectName(proj, _) check_project(proj); return (S.project_file or ""):match("([^/]*)$") end

function API.CountTracks(proj) check_project(proj); return #S.tracks end
function API.GetTrack(proj, index) check_project(proj); return S.tracks[index + 1] end
function API.CountSelectedTracks(proj) check_project(proj); return #selected_tracks() end
function API.GetSelectedTrack(proj, index) check_project(proj); return selected_tracks()[index + 1] end
function API.GetTrackGUID(track) return track.guid end
function API.GetMediaTrackInfo_Value(track, key) return track_value(track, key) end
function API.GetSetMediaTrackInfo_String(track, key, value, set)
  assert(key == "P_NAME", "GetSetMediaTrackInfo_String: only P_NAME is in the stub")
  if set then track.name = value end
  return true, track.name
end
function API.InsertTrackAtIndex(index, want_defaults)
  assert(index >= 0 and index <= #S.tracks, "InsertTrackAtIndex: index out of range")
  table.insert(S.tracks, index + 1, {guid = new_guid(), name = "", items = {}})
end

function API.CountTrackMediaItems(track) return #track.items end
function API.GetTrackMediaItem(track, index) return track.items[index + 1] end
function API.GetMediaItemInfo_Value(item, key) return item[assert(ITEM_KEYS[key], key)] end
function API.SetMediaItemInfo_Value(item, key, value) item[assert(ITEM_KEYS[key], key)] = value; return true end
function API.AddMediaItemToTrack(track)
  local item = {position = 0, length = 0, takes = {}}
  track.items[#track.items + 1] = item
  return item
end
function API.AddTakeToMediaItem(item)
  local take = {name = "", startoffs = 0}
  item.takes[#item.takes + 1] = take
  return take
end
function API.CountSelectedMediaItems(proj) check_project(proj); return #selected_items() end
function API.GetSelectedMediaItem(proj, index) check_project(proj); return selected_items()[index + 1] end
function API.GetActiveTake(item) return item.takes[1] end
function API.GetMediaItemTake_Source(take) return take.source end
function API.SetMediaItemTake_Source(take, source) take.source = source; return true end
function API.SetMediaItemTakeInfo_Value(take, key, value)
  assert(key == "D_STARTOFFS", "SetMediaItemTakeInfo_Value: only D_STARTOFFS is in the stub")
  take.startoffs = value
  return true
end
function API.GetSetMediaItemTakeInfo_String(take, key, value, set)
  assert(key == "P_NAME", "GetSetMediaItemTakeInfo_String: only P_NAME is in the stub")
  if set then take.name = value end
  return true, take.name
end
function API.PCM_Source_CreateFromFile(path) return {file = path, length = wav_seconds(path)} end
function API.GetMediaSourceLength(source) return source.length, false end
function API.GetMediaSourceFileName(source, _) return source.file end

function API.GetSetProjectInfo(proj, key, value, set)
  check_project(proj)
  assert(RENDER_NUMBER_KEYS[key], "GetSetProjectInfo: key " .. key .. " is not in the stub")
  if set then S.render[key] = value end
  return S.render[key] or 0
end
function API.GetSetProjectInfo_String(proj, key, value, set)
  check_project(proj)
  if key == "RENDER_TARGETS" then
    assert(not set, "RENDER_TARGETS is read-only")
    local paths = {}
    for _, target in ipairs(render_targets()) do paths[#paths + 1] = target.path end
    return true, table.concat(paths, ";")
  end
  assert(RENDER_TEXT_KEYS[key], "GetSetProjectInfo_String: key " .. key .. " is not in the stub")
  if set then S.render[key] = value end
  return true, S.render[key] or ""
end
function API.Main_OnCommand(command, flag)
  assert(command == 42230, "Main_OnCommand: action " .. tostring(command) .. " is not in the stub")
  for _, target in ipairs(render_targets()) do copy_file(target.from, target.path) end
end
function API.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end
function API.RecursiveCreateDirectory(path, _)
  os.execute(("mkdir -p '%s'"):format(path:gsub("'", "'\\''")))
  return 1
end

function API.GetUserFileNameForRead(initial, title, ext)
  local answer = S.answers.user_file
  return answer ~= nil, answer or ""
end
function API.GetUserInputs(title, count, captions, values)
  local answer = S.answers.user_inputs
  return answer ~= nil, answer or values
end

-- Track FX: ReaEQ (a new instance has the default four bands: low shelf, band, band, high shelf,
-- then its master gain) and ReaComp, with the stub's own curves from normalized values to what the
-- plug-in displays (stand-ins: the real curves are not documented; the scripts only rely on the
-- displayed values). Every parameter keeps its normalized value and its display text.
local function eq_freq(x) return (24000 - 20) * (math.exp(math.log(401) * x) - 1) * 0.0025 + 20 end
local function eq_gain_db(x)
  local amplitude = x <= 0.5 and 2 * x or 1 + (x - 0.5) * 2 * (10 ^ (12 / 20) - 1)
  return amplitude > 0 and 20 * math.log(amplitude, 10) or -math.huge
end
local function db_text(value) return value == -math.huge and "-inf" or ("%+.2f"):format(value) end
local FX_KINDS = {
  ReaEQ = function()
    local params = {}
    local bands = {{1, 0}, {2, 0}, {2, 1}, {4, 0}}
    for b, band in ipairs(bands) do
      for kind, name in ipairs({"Freq", "Gain", "BW"}) do
        params[#params + 1] = {name = ("%s-Band %d"):format(name, b), bandtype = band[1], bandidx = band[2], paramtype = kind - 1,
                               value = kind == 2 and 0.5 or 0.3}
      end
    end
    params[#params + 1] = {name = "Gain", bandtype = -1, bandidx = 0, paramtype = 0, value = 0.5}
    return {name = "VST: ReaEQ (Cockos)", kind = "ReaEQ", params = params,
            bands_enabled = {["1:0"] = true, ["2:0"] = true, ["2:1"] = true, ["4:0"] = true}}
  end,
  ReaComp = function()
    local params = {}
    for _, name in ipairs({"Thresh", "Ratio", "Attack", "Release", "Pre-comp", "Knee", "Wet"}) do
      params[#params + 1] = {name = name, value = 0.5}
    end
    return {name = "VST: ReaComp (Cockos)", kind = "ReaComp", params = params}
  end,
}
local FX_DISPLAY = {
  ReaEQ = function(param, x)
    if param.bandtype == -1 or param.paramtype == 1 then return db_text(eq_gain_db(x)) end
    if param.paramtype == 0 then return x >= 0.5 and ("%.3fk"):format(eq_freq(x) / 1000) or ("%.1f"):format(eq_freq(x)) end
    return ("%.3f oct"):format(4 * x)
  end,
  ReaComp = function(param, x)
    if param.name == "Thresh" then return x > 0 and ("%.2f"):format(20 * math.log(x, 10)) or "-inf" end
    if param.name == "Ratio" then return ("%.2f:1"):format(1 + 99 * x) end
    if param.name == "Attack" then return ("%.2f ms"):format(500 * x) end
    if param.name == "Release" then return ("%.1f ms"):format(5000 * x) end
    return ("%.3f"):format(x)
  end,
}

local function track_fx(track, index)
  local fx = (track.fx or {})[index + 1]
  assert(fx, "no FX " .. tostring(index) .. " on track " .. tostring(track.name))
  return fx
end
local function fx_param(fx, index) return assert(fx.params[index + 1], "no parameter " .. tostring(index)) end

function API.TrackFX_GetCount(track) return #(track.fx or {}) end
function API.TrackFX_AddByName(track, name, rec, instantiate)
  assert(instantiate == -1, "the stub only adds new instances (instantiate = -1)")
  local make = FX_KINDS[name]
  if not make then return -1 end
  track.fx = track.fx or {}
  local fx = make()
  fx.enabled, fx.renamed = true, ""
  track.fx[#track.fx + 1] = fx
  return #track.fx - 1
end
function API.TrackFX_GetNamedConfigParm(track, index, key)
  assert(key == "renamed_name", "TrackFX_GetNamedConfigParm: only renamed_name is in the stub")
  return true, track_fx(track, index).renamed
end
function API.TrackFX_SetNamedConfigParm(track, index, key, value)
  assert(key == "renamed_name", "TrackFX_SetNamedConfigParm: only renamed_name is in the stub")
  track_fx(track, index).renamed = value
  return true
end
function API.TrackFX_GetNumParams(track, index) return #track_fx(track, index).params end
function API.TrackFX_GetParamName(track, index, param, _) return true, fx_param(track_fx(track, index), param).name end
function API.TrackFX_GetEQParam(track, index, param)
  local p = fx_param(track_fx(track, index), param)
  if p.bandtype == nil then return false, 0, 0, 0, 0 end
  return true, p.bandtype, p.bandidx, p.paramtype, p.value
end
function API.TrackFX_FormatParamValueNormalized(track, index, param, value, _)
  local fx = track_fx(track, index)
  return true, FX_DISPLAY[fx.kind](fx_param(fx, param), value)
end
function API.TrackFX_SetParamNormalized(track, index, param, value)
  local fx = track_fx(track, index)
  local p = fx_param(fx, param)
  p.value, p.display = value, FX_DISPLAY[fx.kind](p, value)
  return true
end
function API.TrackFX_SetEQBandEnabled(track, index, bandtype, bandidx, enable)
  local fx = track_fx(track, index)
  local key = ("%d:%d"):format(bandtype, bandidx)
  if not fx.bands_enabled or fx.bands_enabled[key] == nil then return false end
  fx.bands_enabled[key] = enable
  return true
end
function API.TrackFX_SetEnabled(track, index, enabled) track_fx(track, index).enabled = enabled end

local TRACK_NUMBERS = {D_VOL = "volume", D_PAN = "pan", D_WIDTH = "width", I_PANMODE = "pan_mode"}
function API.SetMediaTrackInfo_Value(track, key, value)
  track[assert(TRACK_NUMBERS[key], "SetMediaTrackInfo_Value: key " .. key .. " is not in the stub")] = value
  return true
end

function API.Undo_BeginBlock() end
function API.Undo_EndBlock(description, flags) end
function API.PreventUIRefresh(count) end
function API.UpdateArrange() end
function API.TrackList_AdjustWindows(minor) end

-- Arguments as the call log shows them: objects by kind and name.
local function describe(value)
  if type(value) ~= "table" then return value end
  if value == PROJECT then return "<project>" end
  if value.guid then return "<track " .. value.name .. ">" end
  if value.params then return "<fx " .. value.name .. ">" end
  if value.takes then return "<item>" end
  if value.startoffs then return "<take>" end
  if value.file then return "<source " .. value.file .. ">" end
  return "<table>"
end

reaper = setmetatable({}, {__index = function(_, name)
  local fn = API[name]
  if not fn then error("reaper." .. name .. " is not in the stub", 2) end
  return function(...)
    local args = table.pack(...)
    for i = 1, args.n do args[i] = describe(args[i]) end
    calls[#calls + 1] = {name = name, args = args}
    return fn(...)
  end
end})

-- ---------------------------------------------------------------------------------------------
local failure
local ok, err = xpcall(dofile, debug.traceback, script_path)
if not ok then failure = err end
local deadline = API.time_precise() + (S.run_seconds or 90)
while not failure and #deferred > 0 do
  if API.time_precise() > deadline then failure = "the deferred loop was still running after the time limit"; break end
  local round = deferred
  deferred = {}
  for _, fn in ipairs(round) do
    ok, err = xpcall(fn, debug.traceback)
    if not ok then failure = err; break end
  end
  os.execute("sleep 0.05")
end

local function to_json(value, out)
  local kind = type(value)
  if kind == "table" and value.n then  -- an argument list (may hold nils)
    out[#out + 1] = "["
    for i = 1, value.n do
      if i > 1 then out[#out + 1] = "," end
      to_json(value[i], out)
    end
    out[#out + 1] = "]"
  elseif kind == "table" and (value[1] ~= nil or next(value) == nil) then
    out[#out + 1] = "["
    for i, v in ipairs(value) do
      if i > 1 then out[#out + 1] = "," end
      to_json(v, out)
    end
    out[#out + 1] = "]"
  elseif kind == "table" then
    local keys = {}
    for k in pairs(value) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      to_json(k, out)
      out[#out + 1] = ":"
      to_json(value[k], out)
    end
    out[#out + 1] = "}"
  elseif kind == "string" then
    out[#out + 1] = '"' .. value:gsub('[%c"\\]', function(c) return ("\\u%04x"):format(c:byte()) end) .. '"'
  elseif kind == "number" then
    out[#out + 1] = math.type(value) == "integer" and tostring(value) or ("%.17g"):format(value)
  elseif kind == "boolean" then
    out[#out + 1] = tostring(value)
  else
    out[#out + 1] = "null"
  end
  return out
end

local function to_lua(value, indent)
  if type(value) == "string" then return ("%q"):format(value) end
  if type(value) == "number" then return math.type(value) == "integer" and tostring(value) or ("%.17g"):format(value) end
  if type(value) ~= "table" then return tostring(value) end
  local parts = {}
  for k, v in pairs(value) do
    local key = type(k) == "number" and ("[%d]"):format(k) or ("[%q]"):format(k)
    parts[#parts + 1] = indent .. "  " .. key .. " = " .. to_lua(v, indent .. "  ")
  end
  table.sort(parts)
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

local f = assert(io.open(project_path, "w"))
f:write("return " .. to_lua(S, "") .. "\n")
f:close()
f = assert(io.open(out_path, "w"))
f:write(table.concat(to_json({calls = calls, console = table.concat(console), boxes = boxes, error = failure,
                              tracks = S.tracks, render = S.render, proj_ext_state = S.proj_ext_state,
                              ext_state = S.ext_state}, {})))
f:close()
