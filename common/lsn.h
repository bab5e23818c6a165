// PostgreSQL log sequence numbers as the server writes them ("16/B374D848") and as strata
// compares and stores them (0x16B374D848): the one parser shared by ingest's CDC streamer and the
// loader's CDC apply.
#pragma once
#include <cstdint>
#include <string>

namespace strata {

// Throws InputError naming the text for anything but two hex numbers of at most 32 bits, X/Y.
uint64_t ParseLsn(const std::string& text);
std::string FormatLsn(uint64_t lsn);

}  // namespace strata
