package inventory

// FastDecode and DecodeYAML are the two decoding paths, for the tests that
// hold them to the same results. DecodeYAML gathers the entries of all
// documents in one File, as the fast path does.
var FastDecode = fastDecode

func DecodeYAML(name string, data []byte) (File, int, error) {
	var (
		all  File
		docs int
	)

	err := decodeYAML(name, data, func(f *File) {
		docs++
		all.Sites = append(all.Sites, f.Sites...)
		all.Clusters = append(all.Clusters, f.Clusters...)
	})

	return all, docs, err
}
