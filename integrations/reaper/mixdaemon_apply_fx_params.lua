-- @description mixdaemon: apply the last conversion's FX settings (param engine) to its tracks as ReaEQ, ReaComp, volume, pan and width
-- mixdaemon action (see README.md beside it); keep it in the folder of mixdaemon_common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
dofile(here .. "mixdaemon_common.lua").apply_fx_params()
