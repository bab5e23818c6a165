// Extracts one <table> from an HTML page with gumbo (a real HTML5 parser, so malformed markup
// parses the way browsers parse it). Cell text has entities decoded and whitespace collapsed.
#pragma once
#include <string>
#include <vector>

namespace strata::ingest {

struct HtmlTable {
  std::vector<std::string> headers;             // text of the first row's cells
  std::vector<std::vector<std::string>> rows;   // following rows
};

// Throws InputError saying what was expected and what the page has instead:
// "no <table id=\"states\"> on the page; tables found: [id=\"regions\"]".
HtmlTable ExtractHtmlTable(const std::string& html, const std::string& table_id);

}  // namespace strata::ingest
