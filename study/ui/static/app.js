// Entry point: /runs/NAME shows one run, every other path the runs table.
import { showRun } from "./run.js";
import { showRuns } from "./table.js";

const match = window.location.pathname.match(/^\/runs\/([^/]+)\/?$/);
if (match) showRun(decodeURIComponent(match[1]));
else showRuns();
