// Minimal test helpers for the header tests: CHECK prints the failing expression and counts it.
#pragma once
#include <cstdio>

static int g_failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                        \
    }                                                                      \
  } while (0)
#define TEST_MAIN_END()                                         \
  std::printf("%s\n", g_failures ? "FAILED" : "OK");            \
  return g_failures ? 1 : 0
