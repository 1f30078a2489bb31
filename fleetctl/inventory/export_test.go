package inventory

// FastDecode and DecodeYAML are the two decoding paths, for the tests that
// hold them to the same results.
var FastDecode = fastDecode

func DecodeYAML(name string, data []byte) ([]File, error) {
	var docs []File

	err := decodeYAML(name, data, func(f *File) { docs = append(docs, *f) })

	return docs, err
}
