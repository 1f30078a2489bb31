// Command fakelabos stands in for labos in labctl's tests: it prints a
// healthy status marker at once and then idles, so the CLI's boot, report,
// detach, ps and down paths run on a real VM in seconds.
package main

import (
	"encoding/json"
	"fmt"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

var version = "fake"

func main() {
	fmt.Println(nodeapi.FormatMarker(nodeapi.MarkerInit, "version="+version))

	st := nodeapi.Status{Version: version, TPMUnlocked: true, Healthy: true,
		Checks: []nodeapi.Check{{Name: nodeapi.ServiceTPMUnlock, Healthy: true, Message: "fake"}}}

	data, err := json.Marshal(st)
	if err != nil {
		panic(err)
	}

	fmt.Println(nodeapi.FormatMarker(nodeapi.MarkerStatus, string(data)))

	select {}
}
