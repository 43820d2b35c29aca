// build_tree: ancestor mask, depth and root-to-leaf paths of B trees given by parent indices.
// Layout: parents [B, M] int64 (node 0 = root with parent -1, node i > 0 has parent in [0, i),
// entries at i >= n_nodes[b] are padding); outputs mask [B, M, M] bool, depth [B, M], paths [B, M, M],
// n_paths [B]. The outputs must be pre-filled (mask false, depth -1, paths -1); these functions
// only write the set entries.
// Parallel split: validation and leaf/path extraction are sequential per tree (O(M) and O(M + sum
// of leaf depths)); the mask/depth of each node is independent (CPU: loop, CUDA: one thread per node).
#pragma once

#include "common.h"

namespace radar_ext {
namespace kernels {

struct BuildTreeParams {
  const int64_t* parents;  // [B, M]
  const int64_t* n_nodes;  // [B]
  int64_t B, M;
  bool* mask;              // [B, M, M]
  int64_t* depth;          // [B, M]
  int64_t* paths;          // [B, M, M]
  int64_t* n_paths;        // [B]
};

constexpr int64_t kTreeOk = -1;       // build_tree_validate: the tree is well formed
constexpr int64_t kTreeBadCount = -2;  // build_tree_validate: n_nodes[b] outside [1, M]

// kTreeOk, kTreeBadCount, or the first node i whose parent is wrong (node 0: not -1; i > 0: not in [0, i)).
RADAR_HD inline int64_t build_tree_validate(const BuildTreeParams& p, int64_t b) {
  const int64_t n = p.n_nodes[b];
  if (n < 1 || n > p.M) return kTreeBadCount;
  const int64_t* par = p.parents + b * p.M;
  if (par[0] != -1) return 0;
  for (int64_t i = 1; i < n; ++i)
    if (par[i] < 0 || par[i] >= i) return i;
  return kTreeOk;
}

// Mask row and depth of node i < n_nodes[b] of a validated tree: walk up to the root.
RADAR_HD inline void build_tree_node(const BuildTreeParams& p, int64_t b, int64_t i) {
  const int64_t* par = p.parents + b * p.M;
  bool* mask_row = p.mask + (b * p.M + i) * p.M;
  int64_t d = 0;
  for (int64_t j = i; j > 0; j = par[j], ++d) mask_row[j] = true;
  mask_row[0] = true;
  p.depth[b * p.M + i] = d;
}

// Leaves of tree b in increasing index, each with its root-to-leaf path; needs the depths.
// has_child: scratch of M bytes for this tree.
RADAR_HD inline void build_tree_paths(const BuildTreeParams& p, int64_t b, unsigned char* has_child) {
  const int64_t n = p.n_nodes[b];
  const int64_t* par = p.parents + b * p.M;
  for (int64_t i = 0; i < n; ++i) has_child[i] = 0;
  for (int64_t i = 1; i < n; ++i) has_child[par[i]] = 1;
  int64_t row = 0;
  for (int64_t leaf = 0; leaf < n; ++leaf) {
    if (has_child[leaf]) continue;
    int64_t* path = p.paths + (b * p.M + row) * p.M;
    int64_t node = leaf;
    for (int64_t d = p.depth[b * p.M + leaf]; d >= 0; --d, node = par[node]) path[d] = node;
    ++row;
  }
  p.n_paths[b] = row;
}

}  // namespace kernels
}  // namespace radar_ext
