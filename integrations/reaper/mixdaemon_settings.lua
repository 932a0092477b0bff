-- @description mixdaemon: settings (transport, OSC address, folders, import when done)
-- mixdaemon action (see README.md beside it); keep it in the folder of mixdaemon_common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
dofile(here .. "mixdaemon_common.lua").edit_settings()
