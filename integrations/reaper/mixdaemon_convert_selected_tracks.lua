-- @description mixdaemon: convert the selected tracks to the project's reference style (render as stems, send, import the result)
-- mixdaemon action (see README.md beside it); keep it in the folder of mixdaemon_common.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
dofile(here .. "mixdaemon_common.lua").convert_selected_tracks()
