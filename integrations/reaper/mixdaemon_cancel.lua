-- @description mixdaemon: cancel the last conversion of this project (if it is still queued or running)
-- mixdaemon action (see README.md beside it); keep it in the folder of mixdaemon_common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
dofile(here .. "mixdaemon_common.lua").cancel_last_job()
