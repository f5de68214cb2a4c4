"""Maze: a generator of n x n mazes with a unique, long shortest path, and its checks (Maze-Hard's format).

Text form as in sapientinc/maze-30x30-hard-1k: '#' wall, ' ' open, 'S' start, 'G' goal;
the label is the same grid with the cells of the shortest S-G path (S and G excluded)
marked 'o'. The rating is the shortest path's length in moves (Maze-Hard keeps > 110).

    question, answer, rating = generate_maze(rng_for(0, STREAM_GENERATE_TRAIN, 0), size=30, min_path_len=110)
"""

from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np


class MazeError(ValueError):
    """A maze that cannot be used (no path, several shortest paths, wrong size)."""


_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _bfs(open_cells: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Distances from `start` (-1 unreachable) and number of shortest paths (capped at 2)."""
    n_rows, n_cols = open_cells.shape
    dist = np.full(open_cells.shape, -1, np.int64)
    ways = np.zeros(open_cells.shape, np.int64)
    dist[start] = 0
    ways[start] = 1
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in _MOVES:
            rr, cc = r + dr, c + dc
            if 0 <= rr < n_rows and 0 <= cc < n_cols and open_cells[rr, cc]:
                if dist[rr, cc] < 0:
                    dist[rr, cc] = dist[r, c] + 1
                    ways[rr, cc] = ways[r, c]
                    queue.append((rr, cc))
                elif dist[rr, cc] == dist[r, c] + 1:
                    ways[rr, cc] = min(2, ways[rr, cc] + ways[r, c])
    return dist, ways


def shortest_path(grid: np.ndarray) -> tuple[Optional[list[tuple[int, int]]], int]:
    """The S-G shortest path as cells (S first) and the number of shortest paths (capped at 2).

    `grid` is an (n, n) array of characters ('#', ' ', 'S', 'G'; 'o' counts as open).
    """
    start = tuple(int(x) for x in np.argwhere(grid == "S")[0])
    goal = tuple(int(x) for x in np.argwhere(grid == "G")[0])
    dist, ways = _bfs(grid != "#", start)
    if dist[goal] < 0:
        return None, 0
    path = [goal]
    while path[-1] != start:
        r, c = path[-1]
        for dr, dc in _MOVES:
            rr, cc = r + dr, c + dc
            if 0 <= rr < grid.shape[0] and 0 <= cc < grid.shape[1] and dist[rr, cc] == dist[r, c] - 1 and grid[rr, cc] != "#":
                path.append((rr, cc))
                break
    return path[::-1], int(ways[goal])


def solve_maze(question: str, size: int) -> tuple[str, int]:
    """The label text (path marked 'o') and the path length; raises MazeError if not unique."""
    grid = np.array(list(question)).reshape(size, size)
    if (grid == "S").sum() != 1 or (grid == "G").sum() != 1:
        raise MazeError("must hold exactly one 'S' and one 'G'")
    path, ways = shortest_path(grid)
    if path is None:
        raise MazeError("has no path from 'S' to 'G'")
    if ways > 1:
        raise MazeError("has several shortest paths from 'S' to 'G'")
    label = grid.copy()
    for cell in path[1:-1]:
        label[cell] = "o"
    return "".join(label.reshape(-1)), len(path) - 1


def _carve(rng: np.random.Generator, size: int, loop_prob: float) -> np.ndarray:
    """A random spanning-tree maze (iterative DFS: long corridors) with a few walls knocked out.

    Rooms sit at even coordinates; with an even size the last row and column stay wall.
    """
    rooms = (size + 1) // 2
    open_cells = np.zeros((size, size), bool)
    visited = np.zeros((rooms, rooms), bool)
    first = (int(rng.integers(rooms)), int(rng.integers(rooms)))
    visited[first] = True
    open_cells[2 * first[0], 2 * first[1]] = True
    stack = [first]
    while stack:
        r, c = stack[-1]
        nexts = [(r + dr, c + dc) for dr, dc in _MOVES if 0 <= r + dr < rooms and 0 <= c + dc < rooms and not visited[r + dr, c + dc]]
        if not nexts:
            stack.pop()
            continue
        rr, cc = nexts[int(rng.integers(len(nexts)))]
        visited[rr, cc] = True
        open_cells[2 * rr, 2 * cc] = True
        open_cells[r + rr, c + cc] = True  # the wall between the two rooms
        stack.append((rr, cc))
    if loop_prob > 0:
        walls = np.zeros((size, size), bool)
        walls[0 : 2 * rooms - 1 : 2, 1 : 2 * rooms - 1 : 2] = True  # between horizontal neighbours
        walls[1 : 2 * rooms - 1 : 2, 0 : 2 * rooms - 1 : 2] = True  # between vertical neighbours
        knock = walls & ~open_cells & (rng.random((size, size)) < loop_prob)
        open_cells |= knock
    return open_cells


def generate_maze(
    rng: np.random.Generator, size: int = 30, min_path_len: int = 0, loop_prob: float = 0.05, max_tries: int = 1000
) -> tuple[str, str, int]:
    """A maze whose S-G shortest path is unique and at least `min_path_len` moves long.

    Start: a random open cell; goal: the farthest open cell from it. Returns
    (question text, answer text, path length).
    """
    if size < 2:
        raise MazeError(f"maze size must be at least 2, got {size}")
    for _ in range(max_tries):
        open_cells = _carve(rng, size, loop_prob)
        cells = np.argwhere(open_cells)
        start = tuple(int(x) for x in cells[int(rng.integers(len(cells)))])
        dist, ways = _bfs(open_cells, start)
        far = np.argwhere(dist == dist.max())
        goal = tuple(int(x) for x in far[int(rng.integers(len(far)))])
        length = int(dist[goal])
        if length < max(1, min_path_len) or ways[goal] != 1:
            continue
        grid = np.where(open_cells, " ", "#")
        grid[start], grid[goal] = "S", "G"
        question = "".join(grid.reshape(-1))
        answer, _ = solve_maze(question, size)
        return question, answer, length
    raise MazeError(f"no {size}x{size} maze with a unique shortest path >= {min_path_len} in {max_tries} tries: lower --min-difficulty")
