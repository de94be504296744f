"""Media: decoding images, their integrity checked first (`images`, `integrity`), and videos
through one frame reader (`video`), and the clips of frames a video model labels (`clips`)."""
