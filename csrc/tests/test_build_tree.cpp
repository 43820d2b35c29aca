// build_tree per-node and per-tree functions on hand-made trees, and validation codes.
#include <vector>

#include "check.h"
#include "kernels/build_tree.h"

using namespace radar_ext::kernels;

struct Tree {
  std::vector<bool> maskv;
  std::vector<int64_t> depth, paths, n_paths;
};

Tree build(const std::vector<int64_t>& parents, const std::vector<int64_t>& n_nodes, int64_t M) {
  const int64_t B = static_cast<int64_t>(n_nodes.size());
  bool* mask = new bool[B * M * M]();
  Tree t{{}, std::vector<int64_t>(B * M, -1), std::vector<int64_t>(B * M * M, -1), std::vector<int64_t>(B)};
  const BuildTreeParams p{parents.data(), n_nodes.data(), B, M, mask, t.depth.data(), t.paths.data(), t.n_paths.data()};
  std::vector<unsigned char> has_child(M);
  for (int64_t b = 0; b < B; ++b) {
    CHECK(build_tree_validate(p, b) == kTreeOk);
    for (int64_t i = 0; i < n_nodes[b]; ++i) build_tree_node(p, b, i);
    build_tree_paths(p, b, has_child.data());
  }
  t.maskv.assign(mask, mask + B * M * M);
  delete[] mask;
  return t;
}

int main() {
  const int64_t M = 5;
  // chain, star, single node with garbage padding, a two-level tree
  const std::vector<int64_t> parents = {-1, 0, 1, 2, 3, -1, 0, 0, 0, 0, -1, 7, -5, 99, 0, -1, 0, 0, 1, 1};
  const Tree t = build(parents, {5, 5, 1, 5}, M);
  const int64_t depth_want[] = {0, 1, 2, 3, 4, 0, 1, 1, 1, 1, 0, -1, -1, -1, -1, 0, 1, 1, 2, 2};
  for (int k = 0; k < 20; ++k) CHECK(t.depth[k] == depth_want[k]);
  CHECK(t.n_paths[0] == 1 && t.n_paths[1] == 4 && t.n_paths[2] == 1 && t.n_paths[3] == 3);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < M; ++j) CHECK(t.maskv[i * M + j] == (j <= i));  // chain
  CHECK(t.paths[(1 * M + 2) * M + 0] == 0 && t.paths[(1 * M + 2) * M + 1] == 3 && t.paths[(1 * M + 2) * M + 2] == -1);
  CHECK(t.paths[(2 * M + 0) * M + 0] == 0 && t.paths[(2 * M + 0) * M + 1] == -1);
  // tree 3: leaves 2, 3, 4 -> paths [0, 2], [0, 1, 3], [0, 1, 4]
  const int64_t* p3 = t.paths.data() + 3 * M * M;
  CHECK(p3[0] == 0 && p3[1] == 2 && p3[2] == -1);
  CHECK(p3[M] == 0 && p3[M + 1] == 1 && p3[M + 2] == 3);
  CHECK(p3[2 * M + 2] == 4 && p3[3 * M] == -1);
  CHECK(!t.maskv[2 * M * M + 1 * M + 0] && !t.maskv[2 * M * M + 0 * M + 1]);  // padding invisible

  // validation codes
  const std::vector<int64_t> bad = {-1, 0, 2, 9, 0, 0, 1, 2, -1, 0, 0, 0};
  const std::vector<int64_t> n_bad = {4, 4, 5};
  const BuildTreeParams pb{bad.data(), n_bad.data(), 3, 4, nullptr, nullptr, nullptr, nullptr};
  CHECK(build_tree_validate(pb, 0) == 2);
  CHECK(build_tree_validate(pb, 1) == 0);
  CHECK(build_tree_validate(pb, 2) == kTreeBadCount);
  TEST_MAIN_END();
}
