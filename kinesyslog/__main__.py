from kinesyslog.cli import main

main()
