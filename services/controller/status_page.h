// The controller's status page: one static HTML document (with a little JS, no build step)
// that draws a grid of recent runs x tasks coloured by state from /api/grid, pages backwards
// through history, and shows a run's tasks, durations and check results from /api/runs/<id>.
#pragma once

namespace strata::controller {

// The whole page; it talks only to the JSON endpoints of the same origin.
const char* StatusPageHtml();

}  // namespace strata::controller
