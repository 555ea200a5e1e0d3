// Command etcd is the etcd server, v3.7.0 (the version kubernetes 1.37.2
// pins), built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
