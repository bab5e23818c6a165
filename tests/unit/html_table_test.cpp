#include <gtest/gtest.h>

#include "common/errors.h"
#include "services/ingest/html_table.h"
#include "services/source_sim/source_sim.h"

namespace strata::ingest {
namespace {

TEST(HtmlTable, PicksTableByIdAndNormalisesText) {
  const std::string html =
      "<html><body><table id=a><tr><th>X</th></tr></table>"
      "<table id=\"states\"><thead><tr><th> Name </th><th>Abbr&shy;eviation</th></tr></thead>"
      "<tbody><tr><td>New&nbsp;York\n </td><td><b>NY</b></td></tr>"
      "<tr><td>Texas &amp; more</td><td>TX</td></tr></tbody></table></body></html>";
  const HtmlTable t = ExtractHtmlTable(html, "states");
  ASSERT_EQ(t.headers.size(), 2u);
  EXPECT_EQ(t.headers[0], "Name");
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.rows[0][0], "New York");
  EXPECT_EQ(t.rows[0][1], "NY");
  EXPECT_EQ(t.rows[1][0], "Texas & more");
}

TEST(HtmlTable, MissingTableSaysWhatWasFound) {
  try {
    ExtractHtmlTable("<table id=regions></table><table></table>", "states");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "no <table id=\"states\"> on the page; tables found: [id=\"regions\", <no id>]");
  }
}

TEST(HtmlTable, SimulatorPageHas51States) {
  const HtmlTable t = ExtractHtmlTable(source_sim::StatesHtml({}), "states");
  EXPECT_EQ(t.headers, (std::vector<std::string>{"Name", "Abbreviation"}));
  ASSERT_EQ(t.rows.size(), 51u);
  EXPECT_EQ(t.rows[8][0], "District of Columbia");
  EXPECT_EQ(t.rows[50][1], "WY");
}

}  // namespace
}  // namespace strata::ingest
