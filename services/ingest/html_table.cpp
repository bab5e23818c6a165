#include "services/ingest/html_table.h"

#include <gumbo.h>

#include <functional>

#include "common/errors.h"

namespace strata::ingest {

namespace {

std::string Attr(const GumboNode* n, const char* name) {
  const GumboAttribute* a = gumbo_get_attribute(&n->v.element.attributes, name);
  return a ? a->value : "";
}

void CollectText(const GumboNode* n, std::string& out) {
  if (n->type == GUMBO_NODE_TEXT || n->type == GUMBO_NODE_WHITESPACE || n->type == GUMBO_NODE_CDATA) {
    out += n->v.text.text;
    out += ' ';
  } else if (n->type == GUMBO_NODE_ELEMENT) {
    const GumboVector& kids = n->v.element.children;
    for (unsigned i = 0; i < kids.length; ++i) CollectText(static_cast<GumboNode*>(kids.data[i]), out);
  }
}

std::string NormalizedText(const GumboNode* n) {
  std::string raw;
  CollectText(n, raw);
  std::string out;
  bool space = false;
  for (size_t i = 0; i < raw.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(raw[i]);
    // U+00A0 (&nbsp;) arrives as UTF-8 C2 A0: treat it as whitespace too.
    const bool nbsp = c == 0xC2 && i + 1 < raw.size() && static_cast<unsigned char>(raw[i + 1]) == 0xA0;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || nbsp) {
      if (nbsp) ++i;
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += static_cast<char>(c);
  }
  return out;
}

void Walk(const GumboNode* n, const std::function<void(const GumboNode*)>& fn) {
  if (n->type != GUMBO_NODE_ELEMENT) return;
  fn(n);
  const GumboVector& kids = n->v.element.children;
  for (unsigned i = 0; i < kids.length; ++i) Walk(static_cast<GumboNode*>(kids.data[i]), fn);
}

}  // namespace

HtmlTable ExtractHtmlTable(const std::string& html, const std::string& table_id) {
  GumboOutput* doc = gumbo_parse_with_options(&kGumboDefaultOptions, html.data(), html.size());
  const GumboNode* table = nullptr;
  std::string found;
  Walk(doc->root, [&](const GumboNode* n) {
    if (n->v.element.tag != GUMBO_TAG_TABLE) return;
    const std::string id = Attr(n, "id");
    if (id == table_id && !table) table = n;
    found += std::string(found.empty() ? "" : ", ") + (id.empty() ? "<no id>" : "id=\"" + id + "\"");
  });
  if (!table) {
    gumbo_destroy_output(&kGumboDefaultOptions, doc);
    throw InputError("no <table id=\"" + table_id + "\"> on the page; tables found: [" + found + "]");
  }
  HtmlTable out;
  bool first = true;
  Walk(table, [&](const GumboNode* n) {
    if (n->v.element.tag != GUMBO_TAG_TR) return;
    std::vector<std::string> cells;
    const GumboVector& kids = n->v.element.children;
    for (unsigned i = 0; i < kids.length; ++i) {
      const auto* c = static_cast<const GumboNode*>(kids.data[i]);
      if (c->type == GUMBO_NODE_ELEMENT &&
          (c->v.element.tag == GUMBO_TAG_TD || c->v.element.tag == GUMBO_TAG_TH))
        cells.push_back(NormalizedText(c));
    }
    if (first) {
      out.headers = std::move(cells);
      first = false;
    } else if (!cells.empty()) {
      out.rows.push_back(std::move(cells));
    }
  });
  gumbo_destroy_output(&kGumboDefaultOptions, doc);
  return out;
}

}  // namespace strata::ingest
