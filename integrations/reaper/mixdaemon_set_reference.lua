-- @description mixdaemon: set the project's reference song from the selected item, or from a file
-- mixdaemon action (see README.md beside it); keep it in the folder of mixdaemon_common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
dofile(here .. "mixdaemon_common.lua").set_reference()
