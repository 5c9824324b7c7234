from mosaic.platform import server
from profile_service.app import build
from profile_service.config import Settings


def main() -> None:
    settings = Settings.from_env()
    server.run(settings.platform, lambda runtime: build(runtime, settings))


if __name__ == "__main__":
    main()
