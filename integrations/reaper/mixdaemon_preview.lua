-- @description mixdaemon: play the last conversion (converted mix) through the daemon
-- mixdaemon action (see README.md beside it); keep it in the folder of mixdaemon_common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
dofile(here .. "mixdaemon_common.lua").preview("converted")
