module pgquorum.invalid/pause

go 1.21
